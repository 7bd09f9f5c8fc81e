import type { Argv, CommandModule } from "yargs";
import type { ApiToken } from "../../protocol/token.js";
import { TOKEN_SCOPES } from "../../protocol/token-scopes.js";
import { tokenCreate, tokenList, tokenRevoke } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";
import { ttlOption } from "../options.js";
import { fields, table } from "../render.js";

type Args<T> = GlobalArgs & T;

function expiry(token: ApiToken): string {
  return token.expires_at ?? "never";
}

const createCommand: CommandModule<
  GlobalArgs,
  Args<{ name: string; scope: string; ttl?: string; all?: boolean }>
> = {
  command: "create",
  describe: "Create a token for the remote control listener; its secret is shown once",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option("name", {
        type: "string",
        demandOption: true,
        describe: "a name to tell tokens apart (recorded in the events of each call)",
      })
      .option("scope", {
        choices: TOKEN_SCOPES,
        default: "read",
        describe:
          "read: lists, shows, status, doctor; operate: also create, destroy, start, stop, jobs, workspaces; admin: everything, tokens included",
      })
      .option("all", {
        type: "boolean",
        describe:
          "operate scope: act on every sandbox, job and workspace (by default only on what this token created) and on sessions",
      })
      .option("ttl", {
        type: "string",
        describe: "lifetime, e.g. 30d, 12h or minutes (default: until revoked)",
      })
      .example(
        "$0 token create --name laptop --scope operate --ttl 30d",
        "a token for one machine, valid 30 days",
      ) as unknown as Argv<Args<{ name: string; scope: string; ttl?: string; all?: boolean }>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const ttl = ttlOption(argv.ttl);
      const created = await ctx.call(tokenCreate, {
        name: argv.name,
        scope: argv.scope as ApiToken["scope"],
        ...(argv.all !== undefined ? { all: argv.all } : {}),
        ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
      });
      const text =
        fields([
          ["token", `${created.name} (${created.id})`],
          [
            "scope",
            `${created.scope}${created.scope === "operate" ? (created.all ? ", every target" : ", only what it creates") : ""}`,
          ],
          ["expires", expiry(created)],
          ["secret", created.secret],
        ]) +
        "\nThe secret is shown only now; the daemon keeps its hash. Use it with:\n" +
        `  agentlab connect --endpoint https://<this host>:8845 --token ${created.secret}\n`;
      return { data: created, text };
    }),
};

const listCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "list",
  aliases: ["ls"],
  describe: "List the tokens (never their secrets), revoked and expired ones included",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(tokenList, {});
      const rows = result.tokens.map((t) => [
        t.name,
        t.id,
        t.scope + (t.scope === "operate" && t.all ? " (all)" : ""),
        t.status,
        `${t.hint}…`,
        expiry(t),
        t.last_used_at ?? "never",
      ]);
      const text =
        rows.length === 0
          ? "no tokens (create one with agentlab token create --name <name>)\n"
          : table(["NAME", "ID", "SCOPE", "STATUS", "SECRET", "EXPIRES", "LAST_USED"], rows);
      return { data: result, text };
    }),
};

const revokeCommand: CommandModule<GlobalArgs, Args<{ token: string }>> = {
  command: "revoke <token>",
  describe: "Revoke a token by name or id: every later call with it is refused, open connections included",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs.positional("token", {
      type: "string",
      demandOption: true,
      describe: "token name or id",
    }) as unknown as Argv<Args<{ token: string }>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const revoked = await ctx.call(tokenRevoke, { token: argv.token });
      return {
        data: revoked,
        text: `revoked token ${revoked.name} (${revoked.id}) at ${revoked.revoked_at}\n`,
      };
    }),
};

export const tokenCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "token <command>",
  describe: "Manage tokens for the remote control listener (docs/remote.md)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .command(createCommand)
      .command(listCommand)
      .command(revokeCommand)
      .demandCommand(1, "name a token command"),
  handler: () => {},
};
