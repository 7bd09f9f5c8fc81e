import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { buildCli, COMMAND_WORDS, commandsFor, commandWord } from "../../src/cli/main.js";
import { runCli } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";

/**
 * What the CLI loads to start (issue 15: a command loads its own module and the protocol schemas it
 * calls, not every command's; `--version` loads none of it). Checked by listing the modules a real
 * `agentlab` process loads, through a module hook, instead of timing it: the structure is what
 * regresses, and times on a shared machine say little (scripts/dev/cli-start.ts measures them).
 */
describe("CLI start-up loads only what the command needs", () => {
  let dir: string;
  let hookArgs: string[];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-cli-start-"));
    // Every module URL Node loads goes to stderr, one "LOADED url" line each.
    writeFileSync(
      join(dir, "hooks.mjs"),
      "export async function load(url, context, next) { process.stderr.write('LOADED ' + url + '\\n'); return next(url, context); }\n",
    );
    writeFileSync(
      join(dir, "register.mjs"),
      `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(join(dir, "hooks.mjs")).href)});\n`,
    );
    hookArgs = [process.execPath, "--import", pathToFileURL(join(dir, "register.mjs")).href];
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** The CLI's output without the hook's lines, and the repository paths (or package names) loaded. */
  async function loaded(args: string[]): Promise<{
    code: number | null;
    stderr: string;
    ours: string[];
    packages: Set<string>;
    builtins: string[];
  }> {
    const result = await runCli(args, {
      command: hookArgs,
      env: { AGENTLAB_SOCKET: join(dir, "nobody-listens.sock"), HOME: dir },
    });
    const urls = result.stderr
      .split("\n")
      .filter((line) => line.startsWith("LOADED "))
      .map((line) => line.slice("LOADED ".length));
    const root = pathToFileURL(REPO_ROOT).href;
    const ours = urls.filter((u) => u.startsWith(`${root}/dist/`)).map((u) => u.slice(root.length + 1));
    const packages = new Set(
      urls.flatMap((u) => {
        const match = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u);
        return match ? [match[1]!] : [];
      }),
    );
    const stderr = result.stderr
      .split("\n")
      .filter((line) => !line.startsWith("LOADED "))
      .join("\n");
    const builtins = urls.filter((u) => u.startsWith("node:"));
    return { code: result.code, stderr, ours, packages, builtins };
  }

  test("agentlab status loads its command and the status schema: no other command, protocol index or daemon code", async () => {
    const run = await loaded(["status"]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /^error: invalid socket path .*nobody-listens\.sock: no such socket file/);
    const commands = run.ours.filter((p) => p.startsWith("dist/src/cli/commands/")).sort();
    assert.deepEqual(commands, ["dist/src/cli/commands/completion.js", "dist/src/cli/commands/status.js"]);
    assert.deepEqual(
      run.ours.filter((p) => p.startsWith("dist/src/daemon/")),
      [],
      "the CLI never loads daemon code",
    );
    assert.ok(
      !run.ours.includes("dist/src/protocol/index.js"),
      "protocol/index.js builds every method's schemas",
    );
    for (const other of ["sandbox", "workspace", "session", "job", "token", "files", "exec", "doctor"]) {
      assert.ok(!run.ours.includes(`dist/src/protocol/${other}.js`), `protocol/${other}.js is not status's`);
    }
    for (const lazy of ["ws", "ssh2", "js-yaml", "execa"]) assert.ok(!run.packages.has(lazy), lazy);
    // A local socket needs no TLS: node:tls and node:https come in only for a remote daemon.
    for (const builtin of ["node:tls", "node:https"]) assert.ok(!run.builtins.includes(builtin), builtin);
  });

  test("agentlab --version loads none of the CLI: no yargs, no zod", async () => {
    const run = await loaded(["--version"]);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(run.ours, ["dist/src/version.js"]);
    assert.deepEqual([...run.packages], []);
  });

  test("agentlab --help still lists every command (all modules loaded)", async () => {
    const run = await loaded(["--help"]);
    assert.equal(run.code, 0, run.stderr);
    assert.ok(run.ours.includes("dist/src/cli/commands/workspace.js"));
    assert.ok(run.ours.includes("dist/src/cli/commands/job.js"));
  });
});

describe("the lazy command table", () => {
  test("the command word is the first argument that is no option nor a global option's value", () => {
    assert.equal(commandWord(["--socket", "/s", "--json", "sandbox", "list"]), "sandbox");
    assert.equal(commandWord(["--timeout=5s", "status"]), "status");
    assert.equal(commandWord(["--json"]), undefined);
    assert.equal(commandWord(["--", "status"]), undefined);
  });

  test("names every top-level command of the full CLI, and each word loads the module that defines it", async () => {
    let help = "";
    await (await buildCli(["--help"])).parseAsync(["--help"], {}, (_error, _argv, output) => {
      help = output;
    });
    const listed = [...help.matchAll(/^ {2}agentlab ([a-z][\w-]*)/gm)].map((m) => m[1]!);
    assert.ok(listed.length > 10, help);
    assert.deepEqual([...listed].sort(), [...COMMAND_WORDS].sort());
    for (const word of COMMAND_WORDS) {
      const modules = await commandsFor([word, "--help"]);
      const names = modules.flatMap((m) => [String(m.command).split(" ")[0], ...[m.aliases ?? []].flat()]);
      assert.ok(names.includes(word), `${word}: loaded ${names.join(", ")}`);
      assert.ok(modules.length < 10, `${word} loads its own module, not all of them`);
    }
  });
});
