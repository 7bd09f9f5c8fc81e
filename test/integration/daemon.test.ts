import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { groupId } from "../../src/config/socket-group.js";
import { LATEST_SCHEMA_VERSION } from "../../src/daemon/store/migrations.js";
import {
  type HostDir,
  makeHostDir,
  type RunningDaemon,
  runCli,
  spawnDaemon,
  startDaemon,
} from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { RawRpcClient } from "../helpers/raw-rpc.js";

/** The daemon's stdout is JSON lines; find the ones with a given message. */
function logLines(daemon: RunningDaemon, msg: string): Array<Record<string, unknown>> {
  return daemon
    .output()
    .stdout.split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.msg === msg);
}

describe("agentlabd and agentlab over a real Unix socket", () => {
  let host: HostDir;
  let daemon: RunningDaemon;
  before(async () => {
    host = makeHostDir();
    daemon = await startDaemon(host);
  });
  after(async () => {
    await daemon.stop();
    host.cleanup();
  });

  test("status answers with version, schema, backend, database and sandbox counts", async () => {
    const result = await runCli(["--socket", host.socketPath, "status"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^daemon: +agentlabd \d+\.\d+\.\d+ \(pid \d+/m);
    assert.match(result.stdout, new RegExp(`^schema: +version ${LATEST_SCHEMA_VERSION}$`, "m"));
    // No Proxmox here (and the simulator is not on PATH): status says so and why, and still answers.
    assert.match(result.stdout, /^backend: +shell: unreachable: pvesh not found/m);
    assert.match(result.stdout, new RegExp(`^database: +${host.dbPath} \\(`, "m"));
    assert.match(result.stdout, /^sandboxes: +none$/m);
    // Isolation is nftables: status says whether it is in force (no ruleset here) and how to load it.
    assert.match(
      result.stdout,
      /^isolation: +NOT in force \(network_isolation: auto\): agentlab nftables ruleset not loaded.*\n +hint: load the ruleset: sudo scripts\/net\/apply\.sh --apply/m,
    );

    const json = await runCli(["status", "--json"], { env: { AGENTLAB_SOCKET: host.socketPath } });
    assert.equal(json.code, 0, json.stderr);
    const status = JSON.parse(json.stdout);
    assert.equal(status.schema_version, LATEST_SCHEMA_VERSION);
    assert.equal(status.database.path, host.dbPath);
    assert.ok(status.database.size_bytes > 0);
    assert.deepEqual(status.sandboxes, {});
    assert.equal(status.profiles, 3);
    assert.equal(status.backend.kind, "shell");
    assert.equal(status.backend.reachable, false);
    assert.equal(status.backend.error.code, "PROXMOX_UNREACHABLE");
    assert.equal(status.isolation.in_force, false);
    assert.equal(status.isolation.ruleset.loaded, false);
  });

  test("each RPC call is logged with its own request id", async () => {
    await runCli(["--socket", host.socketPath, "status"]);
    await runCli(["--socket", host.socketPath, "profile", "list"]);
    const calls = logLines(daemon, "rpc ok");
    const ids = new Set(calls.map((line) => line.req));
    assert.ok(calls.length >= 2);
    assert.equal(ids.size, calls.length);
    assert.ok(calls.some((line) => line.method === "profile.list"));
  });

  test("profile list shows the shipped profiles", async () => {
    const result = await runCli(["--socket", host.socketPath, "profile", "list"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^NAME +TEMPLATE +CORES/m);
    for (const name of ["interactive-dev", "yolo-ephemeral", "yolo-workspace"]) {
      assert.match(result.stdout, new RegExp(`^${name} +9000 `, "m"));
    }
  });

  test("a reader that stops reading (agentlab status | head -0) is a quiet exit 0, not an EPIPE stack", async () => {
    for (const args of [["status"], ["status", "--json"], ["profile", "list"]]) {
      const child = spawn(process.execPath, [AGENTLAB_BIN, "--socket", host.socketPath, ...args], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      child.stdout.destroy(); // the reader is gone before the CLI writes its first byte
      let stderr = "";
      child.stderr.on("data", (chunk) => (stderr += chunk));
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      assert.equal(stderr, "", `agentlab ${args.join(" ")}`);
      assert.equal(code, 0, `agentlab ${args.join(" ")}`);
    }
  });

  test("the socket is mode 0660, owned by group agentlab when that group exists", () => {
    const stat = statSync(host.socketPath);
    assert.ok(stat.isSocket());
    assert.equal(stat.mode & 0o777, 0o660);
    const gid = groupId("agentlab");
    if (gid !== undefined && process.getuid?.() === 0) {
      assert.equal(stat.gid, gid);
      // The run directory the daemon created lets the group in, or the socket's mode would not matter.
      const dir = statSync(join(host.root, "run"));
      assert.equal(dir.gid, gid);
      assert.equal(dir.mode & 0o070, 0o050);
    }
  });

  test("a second daemon on the live socket refuses to start and leaves the first serving", async () => {
    const second = spawnDaemon(host);
    assert.equal(await second.exited, 1);
    assert.match(second.output().stderr, /another agentlabd is already listening on .*agentlabd\.sock/);
    const status = await runCli(["--socket", host.socketPath, "status"]);
    assert.equal(status.code, 0, status.stderr);
  });

  test("version prints both versions", async () => {
    const result = await runCli(["--socket", host.socketPath, "version"]);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /^agentlab \d+\.\d+\.\d+ .*\nagentlabd \d+\.\d+\.\d+\n$/);
  });
});

describe("CLI errors", () => {
  test("a missing socket gives the invalid socket path message with the three checks", async () => {
    const result = await runCli(["--socket", "/tmp/agentlab-no-such.sock", "status"]);
    assert.equal(result.code, 1);
    assert.equal(result.stdout, "");
    assert.match(result.stderr, /^error: invalid socket path \/tmp\/agentlab-no-such\.sock/);
    assert.match(result.stderr, /systemctl status agentlabd/);
    assert.match(result.stderr, /ls -l \/tmp\/agentlab-no-such\.sock/);
    assert.match(result.stderr, /systemctl start agentlabd/);
  });

  test("--json errors go to stdout as one envelope", async () => {
    const result = await runCli(["--json", "--socket", "/tmp/agentlab-no-such.sock", "status"]);
    assert.equal(result.code, 1);
    assert.equal(result.stderr, "");
    const envelope = JSON.parse(result.stdout);
    assert.equal(envelope.code, "DAEMON_UNREACHABLE");
    assert.match(envelope.error, /^invalid socket path/);
    assert.equal(envelope.message, envelope.error);
    assert.deepEqual(envelope.details, { socket: "/tmp/agentlab-no-such.sock" });
  });

  test("a daemon that never answers gives the timeout message and the --timeout hint", async () => {
    const host = makeHostDir();
    const silent = createServer(() => {});
    const path = join(host.root, "silent.sock");
    await new Promise<void>((resolve) => silent.listen(path, resolve));
    try {
      const result = await runCli(["--socket", path, "--timeout", "300ms", "status"]);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /^error: timeout waiting for daemon response$/m);
      assert.match(result.stderr, /--timeout 5m/);
    } finally {
      silent.close();
      host.cleanup();
    }
  });

  test("a mistyped command names the typo and suggests the command, in its group", async () => {
    const top = await runCli(["stauts"]);
    assert.equal(top.code, 2);
    assert.match(top.stderr, /^error: unknown command "stauts"\nhint: did you mean agentlab status\?/);
    const nested = await runCli(["--socket", "/tmp/x.sock", "profile", "lst"]);
    assert.equal(nested.code, 2);
    assert.match(
      nested.stderr,
      /^error: unknown command "profile lst"\nhint: did you mean agentlab profile list\?/,
    );
  });

  test("the CLI speaks English whatever the locale: help, the typo hint, errors", async () => {
    // yargs guesses a locale from LC_ALL/LC_MESSAGES/LANG and translates its own words (German: "Kommandos:").
    const german = { LC_ALL: "de_DE.UTF-8", LC_MESSAGES: "de_DE.UTF-8", LANG: "de_DE.UTF-8" };
    const help = await runCli(["--help"], { env: german });
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Commands:$/m);
    assert.match(help.stdout, /^Options:$/m);
    assert.doesNotMatch(help.stdout, /Kommandos|Optionen|Anzeigen/);
    const typo = await runCli(["stauts"], { env: german });
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /^error: unknown command "stauts"\nhint: did you mean agentlab status\?/);
    const missing = await runCli(["sandbox", "show"], {
      env: { ...german, LANG: "fr_FR.UTF-8", LC_ALL: "fr_FR.UTF-8" },
    });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /Not enough non-option arguments/);
  });

  test("a VMID that is not a number is a usage error before the daemon is asked", async () => {
    for (const args of [
      ["sandbox", "show", "abc"],
      ["sandbox", "destroy", "12abc"],
      ["workspace", "attach", "ws", "x1"],
      ["sandbox", "new", "--profile", "p", "--vmid", "abc"],
    ]) {
      // No daemon at this socket: an answer about the socket would mean the VMID went through.
      const result = await runCli(["--socket", "/tmp/agentlab-no-such.sock", ...args]);
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(
        result.stderr,
        /^error: (<vmid>|--vmid) must be a VMID, a whole number from 100 to 999999999 .*; got "(abc|12abc|x1)"$/m,
      );
    }
  });

  test("--socket given twice is a usage error, not a crash", async () => {
    const result = await runCli(["--socket", "/tmp/a.sock", "--socket", "/tmp/b.sock", "status"]);
    assert.equal(result.code, 2);
    assert.match(
      result.stderr,
      /^error: --socket was given 2 times \(\/tmp\/a\.sock, \/tmp\/b\.sock\)\nhint: give --socket once/,
    );
  });

  test("a regular file given as the socket is called out as not a socket", async () => {
    const host = makeHostDir();
    try {
      const result = await runCli(["--socket", host.configPath, "status"]);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /^error: invalid socket path .*config\.yaml: it is not a socket$/m);
    } finally {
      host.cleanup();
    }
  });

  test("usage errors exit 2", async () => {
    for (const args of [["no-such-command"], ["--timeout", "soon", "status"], ["completion", "tcsh"], []]) {
      const result = await runCli(args);
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, /^error: /);
    }
  });

  test("--help and --version exit 0", async () => {
    const help = await runCli(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /agentlab status/);
    const version = await runCli(["--version"]);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
    // The launcher's short path for --version alone says what yargs says with other flags beside it.
    for (const args of [["-v"], ["--version", "--json"], ["--json", "-v"]]) {
      const other = await runCli(args);
      assert.equal(other.code, 0, args.join(" "));
      assert.equal(other.stdout, version.stdout, args.join(" "));
    }
  });

  test("completion scripts for bash and zsh, and the completions they ask for", async () => {
    const bash = await runCli(["completion", "bash"]);
    assert.equal(bash.code, 0);
    assert.match(bash.stdout, /complete -o default -F _agentlab_complete agentlab/);
    const zsh = await runCli(["completion", "zsh"]);
    assert.match(zsh.stdout, /^#compdef agentlab/);
    const words = await runCli(["--get-yargs-completions", "agentlab", "prof"]);
    assert.match(words.stdout, /^profile$/m);
  });

  test("an unsupported Node.js is named before anything else runs", async () => {
    for (const bin of ["agentlab", "agentlabd"]) {
      const preload =
        "data:text/javascript,Object.defineProperty(process,'versions',{value:{...process.versions,node:'18.19.1'}})";
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(
          process.execPath,
          ["--import", preload, join(import.meta.dirname ?? "", `../../../bin/${bin}`), "status"],
          {
            stdio: ["ignore", "ignore", "pipe"],
          },
        );
        let stderr = "";
        child.stderr.on("data", (chunk) => (stderr += chunk));
        child.on("close", (code) => resolve({ code, stderr }));
      });
      assert.equal(result.code, 1);
      assert.match(result.stderr, new RegExp(`^error: ${bin} needs Node.js 20.19 or newer, found 18.19.1`));
    }
  });
});

describe("daemon start-up and shutdown", () => {
  test("SIGTERM stops the daemon cleanly: exit 0, socket removed, database closed", async () => {
    const host = makeHostDir();
    try {
      const daemon = await startDaemon(host);
      assert.equal(await daemon.stop("SIGTERM"), 0);
      assert.equal(existsSync(host.socketPath), false);
      assert.equal(logLines(daemon, "agentlabd stopped").length, 1);
      // A closed WAL database leaves no -wal file behind.
      assert.equal(existsSync(`${host.dbPath}-wal`), false);
    } finally {
      host.cleanup();
    }
  });

  test("a stale socket left by a killed daemon is replaced", async () => {
    const host = makeHostDir();
    try {
      const first = await startDaemon(host);
      assert.equal(await first.stop("SIGKILL"), "SIGKILL");
      assert.ok(statSync(host.socketPath).isSocket(), "kill -9 leaves the socket file");
      const second = await startDaemon(host);
      const status = await runCli(["--socket", host.socketPath, "--json", "status"]);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).pid, second.proc.pid);
      await second.stop();
    } finally {
      host.cleanup();
    }
  });

  test("a file that is not a socket at socket_path is never deleted", async () => {
    const host = makeHostDir();
    try {
      const { mkdirSync } = await import("node:fs");
      mkdirSync(join(host.root, "run"));
      writeFileSync(host.socketPath, "precious");
      const daemon = spawnDaemon(host);
      assert.equal(await daemon.exited, 1);
      assert.match(daemon.output().stderr, /exists and is not a socket/);
      assert.equal(readFileSync(host.socketPath, "utf8"), "precious");
    } finally {
      host.cleanup();
    }
  });

  test("a bad config key stops start-up with the file, the key and what is expected", async () => {
    const host = makeHostDir("proxmox_backend: docker\n");
    try {
      const daemon = spawnDaemon(host);
      assert.equal(await daemon.exited, 1);
      const { stderr } = daemon.output();
      assert.match(stderr, new RegExp(`^agentlabd: error: .*${host.configPath}.*proxmox_backend`, "m"));
      assert.match(stderr, /"shell"/);
      assert.match(stderr, /^hint: /m);
      assert.equal(existsSync(host.socketPath), false);
    } finally {
      host.cleanup();
    }
  });

  test("a bad AGENTLAB_LOG_LEVEL is a clear start-up error", async () => {
    const host = makeHostDir();
    try {
      const daemon = spawnDaemon(host, [], { AGENTLAB_LOG_LEVEL: "chatty" });
      assert.equal(await daemon.exited, 1);
      assert.match(
        daemon.output().stderr,
        /^agentlabd: error: AGENTLAB_LOG_LEVEL: expected one of trace, debug, info, warn, error, got "chatty"$/m,
      );
    } finally {
      host.cleanup();
    }
  });

  test("a bad profile stops start-up with the file and the key", async () => {
    const host = makeHostDir();
    try {
      writeFileSync(
        join(host.profilesDir, "broken.yaml"),
        "name: broken\ntemplate_vmid: 9000\nresources:\n  cores: four\n",
      );
      const daemon = spawnDaemon(host);
      assert.equal(await daemon.exited, 1);
      const { stderr } = daemon.output();
      assert.match(stderr, /broken\.yaml/);
      assert.match(stderr, /resources\.cores/);
    } finally {
      host.cleanup();
    }
  });

  test("a database from a newer agentlabd is refused and left untouched", async () => {
    const host = makeHostDir();
    try {
      const first = await startDaemon(host);
      await first.stop();
      const db = new Database(host.dbPath);
      db.prepare(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'from_the_future', ?)",
      ).run("2030-01-01T00:00:00.000000000Z");
      db.close();
      const before = readFileSync(host.dbPath);
      const daemon = spawnDaemon(host);
      assert.equal(await daemon.exited, 1);
      assert.match(
        daemon.output().stderr,
        new RegExp(
          `database schema version 999 is newer than this agentlabd supports \\(${LATEST_SCHEMA_VERSION}\\)`,
        ),
      );
      assert.deepEqual(readFileSync(host.dbPath), before);
    } finally {
      host.cleanup();
    }
  });

  test("a malformed database gives the backup and integrity_check guidance, not a stack trace", async () => {
    const host = makeHostDir();
    try {
      writeFileSync(host.dbPath, Buffer.alloc(8192, 0x5a));
      const daemon = spawnDaemon(host);
      assert.equal(await daemon.exited, 1);
      const { stderr } = daemon.output();
      assert.match(stderr, /database disk image is malformed/);
      assert.match(stderr, /cp .*agentlab\.db .*\.backup/);
      assert.match(stderr, /PRAGMA integrity_check;/);
      assert.doesNotMatch(stderr, /\n\s+at /);
      // The hint's own check command runs as printed and confirms the damage.
      const check = /check it: (sqlite3 .*"PRAGMA integrity_check;")/.exec(stderr)?.[1];
      assert.ok(check, stderr);
      const { spawnSync } = await import("node:child_process");
      const run = spawnSync("sh", ["-c", check], { encoding: "utf8" });
      assert.notEqual(run.status, 0);
      assert.match(`${run.stdout}${run.stderr}`, /not a database|malformed/);
    } finally {
      host.cleanup();
    }
  });

  test("a locked database names the process holding it", async () => {
    const host = makeHostDir();
    try {
      const first = await startDaemon(host);
      await first.stop();
      const holder = spawn(
        process.execPath,
        [
          "-e",
          `const D=require("better-sqlite3");const d=new D(${JSON.stringify(host.dbPath)});d.exec("BEGIN EXCLUSIVE");process.stdout.write("locked\\n");setInterval(()=>{},1000);`,
        ],
        { stdio: ["ignore", "pipe", "inherit"], cwd: join(import.meta.dirname ?? "", "../../..") },
      );
      await new Promise<void>((resolve) => holder.stdout.once("data", () => resolve()));
      try {
        const daemon = spawnDaemon(host);
        assert.equal(await daemon.exited, 1);
        const { stderr } = daemon.output();
        assert.match(stderr, /database is locked/);
        assert.match(stderr, new RegExp(`pid ${holder.pid}`));
        assert.match(stderr, /lsof /);
      } finally {
        holder.kill("SIGKILL");
      }
    } finally {
      host.cleanup();
    }
  });

  test("a socket the user may not open says permission denied and how to join the group", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root to run the CLI as another user");
    const host = makeHostDir();
    try {
      const daemon = await startDaemon(host);
      const { chmodSync } = await import("node:fs");
      chmodSync(host.root, 0o755);
      chmodSync(join(host.root, "run"), 0o755);
      const result = await runCli(["--socket", host.socketPath, "status"], {
        command: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", process.execPath],
        env: { USER: "nobody" },
      });
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /^error: permission denied on socket /m);
      assert.match(result.stderr, /usermod -aG agentlab nobody/);
      await daemon.stop();
    } finally {
      host.cleanup();
    }
  });
});

describe("connections per user on the socket", () => {
  /**
   * Opens `count` connections to the socket as user 65534 (in the socket's group), one after the other,
   * each kept open while the next is made, and prints each one's answer to daemon.status.
   */
  function connectAsNobody(
    socketPath: string,
    count: number,
    gid: number,
  ): Promise<Array<{ result?: unknown; error?: { message: string; data?: { code?: string } } }>> {
    const client = pathToFileURL(join(import.meta.dirname ?? "", "..", "helpers", "raw-rpc.js")).href;
    const script = `
      import { RawRpcClient } from ${JSON.stringify(client)};
      const answers = [];
      const held = [];
      for (let i = 0; i < ${count}; i++) {
        const c = await RawRpcClient.open(${JSON.stringify(socketPath)});
        held.push(c);
        answers.push(await c.request("daemon.status").catch((e) => ({ error: { message: String(e) } })));
      }
      process.stdout.write(JSON.stringify(answers));
      process.exit(0);`;
    return new Promise((resolve, reject) => {
      const child = spawn(
        "setpriv",
        [
          "--reuid=65534",
          `--regid=${gid}`,
          "--clear-groups",
          process.execPath,
          "--input-type=module",
          "-e",
          script,
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (chunk) => (stdout += chunk));
      child.stderr.on("data", (chunk) => (stderr += chunk));
      child.once("error", reject);
      child.once("close", (code) =>
        code === 0 ? resolve(JSON.parse(stdout)) : reject(new Error(`client exited ${code}: ${stderr}`)),
      );
    });
  }

  test("one user gets rpc_max_connections_per_client connections, the next is DAEMON_BUSY; root is not capped", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root to connect as another user");
    const gid = groupId("agentlab");
    if (gid === undefined) return t.skip("needs the agentlab group (scripts/test.sh makes it as root)");
    const host = makeHostDir("rpc_max_connections_per_client: 2\n");
    const daemon = await startDaemon(host);
    const { chmodSync } = await import("node:fs");
    chmodSync(host.root, 0o755);
    chmodSync(join(host.root, "run"), 0o755);
    const rootClients: RawRpcClient[] = [];
    try {
      // Root holds more than the cap: it is the operator, never held to it.
      for (let i = 0; i < 3; i++) {
        const client = await RawRpcClient.open(host.socketPath);
        rootClients.push(client);
        assert.ok((await client.request("daemon.status")).result, "root's connection is served");
      }
      const answers = await connectAsNobody(host.socketPath, 3, gid);
      assert.ok(answers[0]?.result, JSON.stringify(answers[0]));
      assert.ok(answers[1]?.result, JSON.stringify(answers[1]));
      assert.equal(answers[2]?.error?.data?.code, "DAEMON_BUSY", JSON.stringify(answers[2]));
      assert.match(
        answers[2]?.error?.message ?? "",
        /^user 65534 already has 2 connections open to agentlabd \(rpc_max_connections_per_client\)/,
      );
      assert.equal(
        logLines(daemon, "refusing a client: rpc_max_connections_per_client reached for its user").length,
        1,
      );
      // Its connections closed with its process: the user is served again, and root still is.
      const again = await connectAsNobody(host.socketPath, 2, gid);
      assert.ok(
        again.every((answer) => answer.result),
        JSON.stringify(again),
      );
      assert.ok((await rootClients[0]?.request("daemon.status"))?.result);
    } finally {
      for (const client of rootClients) client.socket.destroy();
      await daemon.stop();
      host.cleanup();
    }
  });
});

describe("hostile clients", () => {
  test("malformed and oversized frames and unknown methods leave the daemon serving", async () => {
    const host = makeHostDir();
    const daemon = await startDaemon(host);
    try {
      const { connect } = await import("node:net");
      for (const payload of [
        "Content-Length: nope\r\n\r\n",
        `Content-Length: ${64 * 1024 * 1024}\r\n\r\n`,
        "Content-Length: 4\r\n\r\n{{{{",
        `Content-Length: 60\r\n\r\n${JSON.stringify({ jsonrpc: "2.0", id: 1, method: "nope.nothing", params: {} }).padEnd(60)}`,
      ]) {
        const socket = connect(host.socketPath);
        socket.on("error", () => {});
        await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
        socket.write(payload);
        const answer = await new Promise<string>((resolve) => {
          let text = "";
          socket.on("data", (chunk) => {
            text += chunk;
            if (text.includes("}}")) resolve(text);
          });
          socket.once("close", () => resolve(text));
          setTimeout(() => resolve(text), 2000);
        });
        if (payload.includes("nope.nothing")) {
          assert.match(answer, /"code":-32601/);
          assert.match(answer, /"code":"METHOD_NOT_FOUND"/);
        }
        socket.destroy();
      }
      const status = await runCli(["--socket", host.socketPath, "status"]);
      assert.equal(status.code, 0, status.stderr);
      assert.ok(
        logLines(daemon, "closing connection: frame of 67108864 bytes exceeds the 1048576-byte limit")
          .length === 1,
      );
    } finally {
      await daemon.stop();
      host.cleanup();
    }
  });
});

test("unlink of the socket by someone else does not crash the daemon", async () => {
  const host = makeHostDir();
  const daemon = await startDaemon(host);
  try {
    unlinkSync(host.socketPath);
    assert.equal(await daemon.stop(), 0);
  } finally {
    host.cleanup();
  }
});
