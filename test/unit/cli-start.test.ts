import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { pino } from "pino";
import type { Argv } from "yargs";
import { type AnyCommand, COMMAND_WORDS, commandsFor, commandWord } from "../../src/cli/command-table.js";
import { newCommand } from "../../src/cli/commands/sandbox.js";
import type { GlobalArgs } from "../../src/cli/context.js";
import { directArgs } from "../../src/cli/direct.js";
import { buildCli } from "../../src/cli/parser.js";
import { RpcServer } from "../../src/daemon/rpc/server.js";
import { type DaemonStatus, daemonStatus } from "../../src/protocol/daemon.js";
import {
  jobList,
  profileList,
  sandboxList,
  sessionList,
  tokenList,
  workspaceList,
} from "../../src/protocol/index.js";
import { type Sandbox, sandboxCreate } from "../../src/protocol/sandbox.js";
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
  /** A daemon that answers daemon.status with `answer` (the real method, so its params are checked). */
  let answer: unknown;
  /** And sandbox.create with CREATED, keeping the params each call sent (without its progress token). */
  const created: object[] = [];
  let server: RpcServer;
  let daemonSocket: string;
  before(async () => {
    daemonSocket = join(dir, "stub.sock");
    server = new RpcServer({ log: pino({ level: "silent" }), maxFrameBytes: 64 * 1024 });
    server.register(daemonStatus, () => answer as DaemonStatus);
    server.register(sandboxCreate, (params) => {
      const { progress_token: _token, ...sent } = params;
      created.push(sent);
      return CREATED;
    });
    // Empty lists, so the list commands below run to the daemon's answer and render it.
    server.register(sandboxList, () => ({ sandboxes: [] }));
    server.register(workspaceList, () => ({ workspaces: [] }));
    server.register(sessionList, () => ({ sessions: [] }));
    server.register(jobList, () => ({ jobs: [] }));
    server.register(profileList, () => ({ profiles: [] }));
    server.register(tokenList, () => ({ tokens: [] }));
    await server.listen(daemonSocket);
  });
  after(async () => {
    await server.close(100);
    rmSync(dir, { recursive: true, force: true });
  });

  /** The CLI's output without the hook's lines, and the repository paths (or package names) loaded. */
  async function loaded(
    args: string[],
    socket = join(dir, "nobody-listens.sock"),
  ): Promise<{
    code: number | null;
    stdout: string;
    stderr: string;
    ours: string[];
    packages: Set<string>;
    builtins: string[];
  }> {
    const result = await runCli(args, {
      command: hookArgs,
      env: { AGENTLAB_SOCKET: socket, HOME: dir },
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
    return { code: result.code, stdout: result.stdout, stderr, ours, packages, builtins };
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

  test("agentlab status shows a daemon's status without loading zod or yargs", async () => {
    answer = STATUS;
    const run = await loaded(["status"], daemonSocket);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^daemon: +agentlabd 9\.9\.9 \(pid 4242/m);
    assert.match(run.stdout, /^sandboxes: +RUNNING 2$/m);
    // zod and every method's schemas were most of its start-up, yargs most of the rest (issue 15).
    assert.ok(!run.packages.has("zod"), "zod is loaded: something on the status path imports a schema");
    assert.ok(!run.packages.has("yargs"), "yargs is loaded: status no longer runs without it");
    assert.deepEqual(run.ours.filter((p) => p.startsWith("dist/src/protocol/")).sort(), [
      "dist/src/protocol/errors.js",
      "dist/src/protocol/method.js",
      "dist/src/protocol/request.js",
      "dist/src/protocol/socket.js",
      "dist/src/protocol/units.js",
      "dist/src/protocol/wire.js",
    ]);
  });

  test("agentlab sandbox new --profile creates through the daemon without loading yargs or zod", async () => {
    const run = await loaded(["sandbox", "new", "--profile", "pooled", "--ttl", "2h"], daemonSocket);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(created.at(-1), { profile: "pooled", ttl_minutes: 120 }, "the params yargs would send");
    assert.match(run.stdout, /^vmid: +1234$/m);
    assert.match(run.stdout, /^state: +RUNNING$/m);
    // yargs alone costs about a Node start; a claim from the warm pool is meant to take under 500 ms
    // at the CLI (issue 17), so the plain form runs without it.
    assert.ok(!run.packages.has("yargs"), "yargs is loaded: sandbox new no longer runs without it");
    assert.ok(!run.packages.has("zod"), "zod is loaded");
  });

  test("agentlab status --json against a daemon: the answer and the connection, still without zod", async () => {
    answer = STATUS;
    const run = await loaded(["--json", "status", `--socket=${daemonSocket}`], join(dir, "elsewhere.sock"));
    assert.equal(run.code, 0, run.stderr);
    const shown = JSON.parse(run.stdout) as Record<string, unknown>;
    assert.equal(shown.version, "9.9.9");
    assert.deepEqual(shown.connection, { kind: "socket", path: daemonSocket, source: "--socket" });
    assert.ok(!run.packages.has("zod"));
  });

  test("an answer status cannot show is reported as a protocol mismatch, not as a CLI bug", async () => {
    answer = { version: "0.0.1" };
    const run = await loaded(["status"], daemonSocket);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /^error: unexpected answer from agentlabd to daemon\.status$/m);
    assert.doesNotMatch(run.stderr, /bug in the agentlab CLI/);
  });

  /**
   * A command line for every top-level command module (command-table.ts), with what its user sees: the
   * list commands run to the stub daemon's answer, the others fail on the socket nobody listens on (or
   * show their help) after their module and everything it imports are loaded. The sandbox shortcuts
   * (new, ls, show, ...) and disconnect share a module with a line here.
   */
  const NOBODY = /^error: invalid socket path .*nobody-listens\.sock: no such socket file/;
  const EVERY_COMMAND: ReadonlyArray<{ args: string[]; daemon?: true; code: number; shows: RegExp }> = [
    { args: ["status"], code: 1, shows: NOBODY },
    { args: ["init", "--help"], code: 0, shows: /^agentlab init\n/ },
    { args: ["sandbox", "new", "--profile", "yolo-ephemeral"], code: 1, shows: NOBODY },
    { args: ["sandbox", "list"], daemon: true, code: 0, shows: /^no sandboxes \(create one/ },
    { args: ["sandbox", "show", "101"], code: 1, shows: NOBODY },
    { args: ["workspace", "list"], daemon: true, code: 0, shows: /^no workspaces \(create one/ },
    { args: ["session", "list"], daemon: true, code: 0, shows: /^no sessions \(create one/ },
    { args: ["ssh", "101"], code: 1, shows: NOBODY },
    { args: ["job", "list"], daemon: true, code: 0, shows: /^no jobs \(run one/ },
    { args: ["profile", "list"], daemon: true, code: 0, shows: /^no profiles loaded/ },
    {
      args: ["connect", "--endpoint", "https://127.0.0.1:9", "--token", "t"],
      code: 1,
      shows: /^error: cannot reach agentlabd at https:\/\/127\.0\.0\.1:9: connection refused/,
    },
    { args: ["token", "list"], daemon: true, code: 0, shows: /^no tokens \(create one/ },
    { args: ["mcp", "--help"], code: 0, shows: /^agentlab mcp\n/ },
    { args: ["maintenance", "run"], code: 1, shows: NOBODY },
    { args: ["db", "check"], code: 1, shows: NOBODY },
    {
      args: ["version"],
      code: 0,
      shows: /^agentlabd: not reachable \(invalid socket path .*no such socket file/m,
    },
    { args: ["completion", "bash"], code: 0, shows: /^# agentlab bash completion/ },
  ];

  test("every command word's module has a command line below (a new command gets one)", async () => {
    const covered = new Set((await Promise.all(EVERY_COMMAND.map((c) => commandsFor(c.args)))).flat());
    for (const word of COMMAND_WORDS) {
      const modules = await commandsFor([word]);
      assert.ok(
        modules.every((m) => covered.has(m)),
        `no command line below loads the module of ${word}`,
      );
    }
  });

  test("no command loads zod, the protocol index or daemon code to start (only mcp, once it serves)", async () => {
    // Two at a time: each is a Node process start-up, and the machine is shared.
    const queue = [...EVERY_COMMAND];
    const worker = async (): Promise<void> => {
      for (let c = queue.shift(); c; c = queue.shift()) {
        const line = c.args.join(" ");
        const run = await loaded(c.args, c.daemon ? daemonSocket : undefined);
        assert.equal(run.code, c.code, `${line}: ${run.stderr}`);
        assert.match(c.code === 0 ? run.stdout : run.stderr, c.shows, line);
        // zod and every method's schemas were most of a command's start-up after yargs (issue 15).
        assert.ok(!run.packages.has("zod"), `${line} loads zod`);
        assert.ok(!run.ours.includes("dist/src/protocol/index.js"), `${line} loads protocol/index.js`);
        const daemon = run.ours.filter((p) => p.startsWith("dist/src/daemon/"));
        assert.deepEqual(daemon, [], `${line} loads daemon code`);
      }
    };
    await Promise.all([worker(), worker()]);
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

/** A daemon.status answer as a daemon gives it (checked against the schema below). */
const STATUS: DaemonStatus = {
  version: "9.9.9",
  pid: 4242,
  started_at: "2026-01-02T03:04:05Z",
  uptime_seconds: 61,
  node_version: "20.19.0",
  schema_version: 7,
  backend: {
    kind: "api",
    reachable: true,
    calls: 3,
    version: "9.0.3",
    nodes: [{ node: "pve", online: true }],
  },
  privileges: { name: "privileges", status: "ok", detail: "all granted" },
  database: { path: "/var/lib/agentlab/agentlab.db", size_bytes: 4096 },
  guest_listener: { address: "10.77.0.1:8844", listening: true },
  socket_path: "/run/agentlab/agentlabd.sock",
  config_path: "/etc/agentlab/config.yaml",
  profiles: 3,
  sandboxes: { RUNNING: 2 },
};

const CREATED: Sandbox = {
  vmid: 1234,
  name: "sandbox-1234",
  profile: "pooled",
  state: "RUNNING",
  ip: "10.77.0.12",
  keepalive: false,
  tags: [],
  created_at: "2026-12-08T00:00:00.000Z",
  updated_at: "2026-12-08T00:00:00.000Z",
  from_pool: true,
};

describe("commands run without yargs", () => {
  test("the status fixture is a valid daemon.status answer", () => {
    assert.ok(daemonStatus.result.safeParse(STATUS).success);
  });

  /** What yargs makes of a command line: the global flags status's handler receives. */
  async function yargsArgs(argv: string[]): Promise<GlobalArgs> {
    let got: GlobalArgs | undefined;
    const status = {
      command: "status",
      describe: "x",
      handler: (args: GlobalArgs) => {
        got = args;
      },
    };
    await (await buildCli(argv, [], [status])).parseAsync(argv, {});
    assert.ok(got, `yargs ran no status for ${argv.join(" ")}`);
    const { socket, json, timeout, endpoint, token, socketGiven } = got;
    return { socket, json, timeout, endpoint, token, socketGiven };
  }

  test("the plain forms give the same global flags as yargs does", async () => {
    for (const argv of [
      ["status"],
      ["status", "--json"],
      ["--json", "status"],
      ["status", "--socket", "/tmp/a.sock"],
      ["--socket=/tmp/a.sock", "status", "--timeout", "5s"],
      ["status", "--endpoint", "https://h:8845", "--token=t0k"],
      ["--timeout=2m", "--json", "status", "--endpoint=https://h:8845"],
    ]) {
      const direct = directArgs(argv);
      assert.ok(direct, argv.join(" "));
      assert.equal(direct.command, "status");
      assert.deepEqual(direct.args, await yargsArgs(argv), argv.join(" "));
    }
  });

  /**
   * What yargs hands `sandbox new` (and the `new` shortcut) for a command line: the real command
   * definitions, with a recorder in place of the call to the daemon.
   */
  async function yargsNewArgs(argv: string[]): Promise<Record<string, unknown>> {
    let got: Record<string, unknown> | undefined;
    const record = async (args: object) => {
      got = { ...args };
    };
    const sandbox = {
      command: "sandbox",
      describe: "x",
      builder: (y: Argv<GlobalArgs>) => y.command(newCommand("new", record)),
      handler: () => {},
    };
    await (
      await buildCli(argv, [], [sandbox as unknown as AnyCommand, newCommand("new", record) as AnyCommand])
    ).parseAsync(argv, {});
    assert.ok(got, `yargs ran no sandbox new for ${argv.join(" ")}`);
    return got;
  }
  /** The arguments runNew reads. */
  const NEW_KEYS = [
    "socket",
    "json",
    "timeout",
    "endpoint",
    "token",
    "socketGiven",
    "profile",
    "name",
    "ttl",
    "workspace",
    "keepalive",
    "vmid",
    "tag",
  ] as const;
  const pick = (args: Record<string, unknown>) => Object.fromEntries(NEW_KEYS.map((key) => [key, args[key]]));
  /** yargs gives no modifiers or an empty list; runNew reads both as none. */
  const modifiersOf = (args: Record<string, unknown>) => (args["modifiers"] as string[] | undefined) ?? [];

  test("sandbox new's plain forms give the same arguments as yargs does", async () => {
    for (const argv of [
      ["sandbox", "new", "--profile", "yolo-ephemeral"],
      ["new", "--profile=yolo-ephemeral"],
      ["--json", "sandbox", "new", "--profile", "p", "--name", "box 1", "--ttl", "2h"],
      ["--socket=/tmp/a.sock", "new", "--workspace", "ws1", "--profile", "p", "--timeout", "5m"],
      ["sandbox", "new", "--ttl=90", "--json", "--profile", "p", "--endpoint", "https://h:8845"],
      ["sandbox", "new"],
    ]) {
      const direct = directArgs(argv);
      assert.ok(direct, argv.join(" "));
      assert.equal(direct.command, argv.includes("sandbox") ? "sandbox new" : "new");
      const parsed = await yargsNewArgs(argv);
      assert.deepEqual(pick(direct.args), pick(parsed), argv.join(" "));
      assert.deepEqual(modifiersOf(direct.args), modifiersOf(parsed), argv.join(" "));
    }
  });

  test("anything but the plain forms is left to yargs", () => {
    for (const argv of [
      [],
      ["--json"],
      ["status", "--help"],
      ["status", "-h"],
      ["status", "extra"],
      ["status", "--json", "--json"],
      ["status", "--json=false"],
      ["status", "--no-json"],
      ["status", "--socket"],
      ["status", "--socket", "--json"],
      ["status", "--socket="],
      ["status", "--socket", "/a", "--socket", "/b"],
      ["status", "--timeout", "soon"],
      ["status", "--timeout=0s"],
      ["status", "--verbose"],
      ["status", "--", "x"],
      ["sandbox", "list"],
      ["stauts"],
      ["sandbox", "new", "+yolo", "+ephemeral"],
      ["new", "--profile", "p", "--keepalive"],
      ["new", "--profile", "p", "--tag", "a"],
      ["new", "--profile", "p", "--vmid", "120"],
      ["new", "--profile", "p", "--profile", "q"],
      ["new", "--profile", "--name", "n"],
      ["new", "--profile="],
      ["--profile", "p", "sandbox", "new"],
      ["sandbox", "--profile", "p", "new"],
      ["status", "--profile", "p"],
      ["sandbox", "new", "--help"],
      ["sandbox", "new", "--profile", "p", "extra"],
      ["sandbox", "new", "--profile", "p", "--", "+x"],
    ]) {
      assert.equal(directArgs(argv), undefined, argv.join(" "));
    }
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
