import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import { daemonStatus } from "../../protocol/wire.js";
import { call } from "../client.js";
import { DEFAULT_TIMEOUT_MS, execute, type GlobalArgs, parseTimeout } from "../context.js";
import { normaliseEndpoint } from "../remote/connection.js";
import { clientConfigPath, loadSaved, removeSaved, saveConnection } from "../remote/saved.js";
import { fetchHealth, normaliseFingerprint, probeCertificate } from "../remote/transport.js";
import { fields } from "../render.js";

type ConnectArgs = GlobalArgs & {
  fingerprint?: string;
  "jump-host"?: string;
  "jump-user"?: string;
};

/**
 * Test a remote endpoint and save it: read its certificate without sending anything, pin it (trust on
 * first use, or the --fingerprint given), check /health, then one authenticated call, and only then
 * write client.json.
 */
export const connectCommand: CommandModule<GlobalArgs, ConnectArgs> = {
  command: "connect",
  describe: "Test a remote agentlabd and save it (endpoint, token, pinned certificate) as this CLI's default",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option("fingerprint", {
        type: "string",
        describe:
          "SHA-256 fingerprint the server's certificate must have (agentlab status on the daemon's host shows it); without it a self-signed certificate is pinned as seen now (trust on first use)",
      })
      .option("jump-host", {
        type: "string",
        describe: "SSH jump host for reaching sandboxes; stored for agentlab ssh, not used by connect",
      })
      .option("jump-user", {
        type: "string",
        describe:
          "user on the jump host (which defaults to the endpoint's host); stored for agentlab ssh, not used by connect",
      })
      .example(
        "$0 connect --endpoint https://host.tailnet.ts.net:8845 --token <token> --jump-user <user>",
        "use the daemon on host through its tailnet address from now on",
      )
      .epilogue(
        `Saves ~/.config/agentlab/client.json ($XDG_CONFIG_HOME respected; mode 0600). Precedence afterwards: --endpoint/--socket flags > AGENTLAB_ENDPOINT/AGENTLAB_SOCKET > this saved connection > the local socket; agentlab status says which is in use.`,
      ) as unknown as Argv<ConnectArgs>,
  handler: (argv) =>
    execute(argv, async () => {
      const endpointText = argv.endpoint ?? process.env.AGENTLAB_ENDPOINT;
      if (endpointText === undefined || endpointText === "") {
        throw new AgentlabError("USAGE", "connect needs --endpoint", {
          hint: "agentlab connect --endpoint https://host.tailnet.ts.net:8845 --token <token>",
        });
      }
      const endpoint = normaliseEndpoint(endpointText, "--endpoint");
      const token = argv.token ?? process.env.AGENTLAB_TOKEN;
      if (token === undefined || token === "") {
        throw new AgentlabError("USAGE", "connect needs --token", {
          hint: "create one on the daemon's host: agentlab token create --name <name> --scope operate",
        });
      }
      let wanted: string | undefined;
      if (argv.fingerprint !== undefined) {
        wanted = normaliseFingerprint(argv.fingerprint);
        if (!wanted) {
          throw new AgentlabError(
            "USAGE",
            `--fingerprint: ${JSON.stringify(argv.fingerprint)} is not a SHA-256 fingerprint`,
            {
              hint: "give the 64 hex digits, with or without colons, e.g. AB:CD:...",
            },
          );
        }
      }
      const timeoutMs = argv.timeout !== undefined ? parseTimeout(argv.timeout) : DEFAULT_TIMEOUT_MS;
      const seen = await probeCertificate(endpoint, Math.min(timeoutMs, 15_000));
      const previous = loadSaved();
      const pinnedBefore = previous?.endpoint === endpoint ? previous.fingerprint : undefined;
      if (wanted !== undefined && wanted !== seen.fingerprint) {
        throw new AgentlabError(
          "FINGERPRINT_MISMATCH",
          `the certificate of ${endpoint} has fingerprint ${seen.fingerprint}, not the ${wanted} given with --fingerprint`,
          {
            hint: "compare with agentlab status on the daemon's host; a different fingerprint may mean someone is intercepting the connection",
            details: { endpoint, expected: wanted, seen: seen.fingerprint },
          },
        );
      }
      if (wanted === undefined && pinnedBefore !== undefined && pinnedBefore !== seen.fingerprint) {
        throw new AgentlabError(
          "FINGERPRINT_MISMATCH",
          `the certificate of ${endpoint} changed: fingerprint ${seen.fingerprint}, pinned ${pinnedBefore}`,
          {
            hint: `if the daemon's certificate was replaced on purpose (check agentlab status on its host), pin the new one: agentlab connect --endpoint ${endpoint} --token <token> --fingerprint ${seen.fingerprint}`,
            details: { endpoint, pinned: pinnedBefore, seen: seen.fingerprint },
          },
        );
      }
      // A certificate the system's CAs vouch for (a public one, tailscale serve's) is checked that way
      // from now on, so its renewals keep working; anything else is pinned exactly.
      const trust: "pin" | "ca" = seen.trusted && wanted === undefined ? "ca" : "pin";
      const pin =
        trust === "pin" ? { fingerprint: seen.fingerprint, certificate: seen.certificate } : undefined;
      const health = await fetchHealth(endpoint, pin, Math.min(timeoutMs, 15_000));
      const status = await call(
        {
          socketPath: "",
          remote: { kind: "remote", endpoint, token, source: "--endpoint", tokenSource: "--token", pin },
          timeoutMs,
        },
        daemonStatus,
        {},
      );
      // The spec's `connect ... --jump-user <user>` names no jump host: it is the daemon's host itself.
      const jumpHost = argv["jump-host"] ?? (argv["jump-user"] ? new URL(endpoint).hostname : undefined);
      const saved = {
        endpoint,
        token,
        fingerprint: seen.fingerprint,
        trust,
        certificate: seen.certificate,
        ...(jumpHost ? { jump_host: jumpHost } : {}),
        ...(argv["jump-user"] ? { jump_user: argv["jump-user"] } : {}),
        saved_at: new Date().toISOString(),
      };
      const path = clientConfigPath();
      saveConnection(saved, path);
      const healthText =
        health.status === 200
          ? "ok"
          : `failing: ${Object.entries(health.body.failed ?? {})
              .map(([what, why]) => `${what}: ${why}`)
              .join("; ")}`;
      const how =
        wanted !== undefined
          ? "matches --fingerprint"
          : pinnedBefore !== undefined
            ? "same as pinned before"
            : trust === "ca"
              ? "valid for the host name under the system CAs; checked that way from now on"
              : "pinned on first use: compare it with agentlab status on the daemon's host";
      const pairs: Array<[string, string]> = [
        ["endpoint", endpoint],
        ["daemon", `agentlabd ${status.version}`],
        ["certificate", `SHA-256 ${seen.fingerprint} (${how})`],
        ["health", healthText],
        ["saved", `${path} (0600)`],
      ];
      if (saved.jump_host || saved.jump_user) {
        pairs.push([
          "jump",
          `${saved.jump_user ? `${saved.jump_user}@` : ""}${saved.jump_host ?? "(host from agentlab ssh --jump-host)"} (for agentlab ssh)`,
        ]);
      }
      const { token: _secret, certificate: _pem, ...shown } = saved;
      return {
        data: { ...shown, daemon_version: status.version, health: health.body, path },
        text: fields(pairs),
      };
    }),
};

export const disconnectCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "disconnect",
  describe: "Forget the connection saved by agentlab connect; the local socket is used again",
  handler: (argv) =>
    execute(argv, async () => {
      const path = clientConfigPath();
      const removed = removeSaved(path);
      return {
        data: { removed, path },
        text: removed ? `removed ${path}; using the local socket again\n` : `not connected (no ${path})\n`,
      };
    }),
};
