/**
 * The temporary repository the smoke test's job clones, and the server that offers it to the sandbox:
 * `git daemon` (git://), else `python3 -m http.server` over the bare repository (git's dumb HTTP). The
 * server binds only the address guests reach and lives as a child of the CLI until stop().
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type CommandRunner, execRunner } from "./host-checks.js";
import { urlHost } from "./smoke-plan.js";
import { startBackground } from "./spawn.js";

export type RepoServerKind = "git-daemon" | "http";

/** The served copy: a bare repository named smoke.git, its branch and the commit the job must run. */
export interface SmokeRepo {
  bare: string;
  name: string;
  ref: string;
  head: string;
}

export interface RepoServer {
  kind: RepoServerKind;
  url: string;
  port: number;
  pid: number | undefined;
  /** Stop the server (TERM, then KILL after 3 s); resolves once it has exited. */
  stop(): Promise<void>;
}

const REPO_NAME = "smoke.git";

/** git with settings that make commits work whatever the user's git config says (signing, hooks). */
const GIT_FLAGS = [
  "-c",
  "user.name=agentlab smoke test",
  "-c",
  "user.email=smoke@agentlab.invalid",
  "-c",
  "commit.gpgsign=false",
  "-c",
  "core.hooksPath=/dev/null",
];

async function git(run: CommandRunner, args: string[]): Promise<string> {
  const result = await run("git", [...GIT_FLAGS, ...args]);
  if (result.spawnError) throw new Error(`cannot run git: ${result.spawnError} (apt-get install git)`);
  if (result.code !== 0) {
    const why = result.stderr.trim().split("\n").slice(-2).join("; ") || `exit ${result.code}`;
    throw new Error(`git ${args.filter((a) => !a.startsWith("/")).join(" ")}: ${why}`);
  }
  return result.stdout.trim();
}

/** Which server this host can run: git daemon (part of git's exec path), else python3. */
export async function findRepoServer(run: CommandRunner = execRunner): Promise<RepoServerKind | undefined> {
  const execPath = await run("git", ["--exec-path"]);
  if (!execPath.spawnError && execPath.code === 0) {
    if (existsSync(path.join(execPath.stdout.trim(), "git-daemon"))) return "git-daemon";
  }
  const python = await run("python3", ["--version"]);
  if (!python.spawnError && python.code === 0) return "http";
  return undefined;
}

/** The hint when neither server is available (the troubleshooting guide's step 3). */
export const NO_REPO_SERVER_HINT =
  "the host must run a temporary repo server (needs python3 or git daemon): python3 --version; git daemon --version (apt-get install git python3)";

/** A new repository whose .agentlab/run.sh is `runScript`, committed on main and cloned bare. */
export async function createSmokeRepo(
  root: string,
  runScript: string,
  run: CommandRunner = execRunner,
): Promise<SmokeRepo> {
  const work = path.join(root, "work");
  mkdirSync(path.join(work, ".agentlab"), { recursive: true });
  writeFileSync(path.join(work, ".agentlab", "run.sh"), runScript, { mode: 0o755 });
  await git(run, ["init", "-q", work]);
  // `git init -b` needs git 2.28; the symbolic ref works everywhere.
  await git(run, ["-C", work, "symbolic-ref", "HEAD", "refs/heads/main"]);
  await git(run, ["-C", work, "add", ".agentlab/run.sh"]);
  await git(run, ["-C", work, "commit", "-q", "-m", "agentlab smoke test"]);
  return bareCopy(root, work, run);
}

/** The operator's repository (--smoke-repo), served from a bare copy so nothing else of theirs is exposed. */
export async function importRepo(
  root: string,
  source: string,
  run: CommandRunner = execRunner,
): Promise<SmokeRepo> {
  const absolute = path.resolve(source);
  const top = await run("git", ["-C", absolute, "rev-parse", "--show-toplevel"]);
  if (top.spawnError || top.code !== 0) {
    throw new Error(`--smoke-repo ${source}: not a git repository (${top.stderr.trim() || top.spawnError})`);
  }
  return bareCopy(root, absolute, run);
}

async function bareCopy(root: string, source: string, run: CommandRunner): Promise<SmokeRepo> {
  const branch = await run("git", ["-C", source, "symbolic-ref", "--short", "HEAD"]);
  if (branch.code !== 0)
    throw new Error(`${source}: HEAD is detached; check out the branch the job should run`);
  const head = await git(run, ["-C", source, "rev-parse", "HEAD"]);
  const serve = path.join(root, "serve");
  mkdirSync(serve, { recursive: true });
  const bare = path.join(serve, REPO_NAME);
  await git(run, ["clone", "-q", "--bare", source, bare]);
  // Dumb HTTP (the python3 server) needs info/refs; harmless for git daemon.
  await git(run, ["--git-dir", bare, "update-server-info"]);
  return { bare, name: REPO_NAME, ref: branch.stdout.trim(), head };
}

/** A port free on `host` right now (the server binds it a moment later; a lost race is retried). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen({ host, port: 0 }, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True when something accepts TCP connections on host:port. */
export function accepts(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

function command(
  kind: RepoServerKind,
  serve: string,
  host: string,
  port: number,
  push: boolean,
): [string, string[]] {
  if (kind === "git-daemon") {
    return [
      "git",
      [
        "daemon",
        "--reuseaddr",
        "--export-all",
        "--informative-errors",
        // Pushes are refused unless asked for (tests of job run --branch push to it).
        ...(push ? ["--enable=receive-pack"] : []),
        `--base-path=${serve}`,
        `--listen=${host}`,
        `--port=${port}`,
        serve,
      ],
    ];
  }
  return ["python3", ["-m", "http.server", String(port), "--bind", host, "--directory", serve]];
}

/**
 * Serve repo.bare's parent on host at a free port. Resolves once the port accepts connections; throws
 * with the server's own words when it exits first (after three tries when the port was taken meanwhile).
 */
export async function startRepoServer(
  kind: RepoServerKind,
  repo: SmokeRepo,
  host: string,
  options: { push?: boolean } = {},
): Promise<RepoServer> {
  const serve = path.dirname(repo.bare);
  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(host);
    const [file, args] = command(kind, serve, host, port, options.push === true);
    const server = startBackground(file, args);
    const child = server.child;
    const deadline = Date.now() + 10_000;
    let ready = false;
    while (
      Date.now() < deadline &&
      child.exitCode === null &&
      child.signalCode === null &&
      !server.spawnError()
    ) {
      if (await accepts(host, port, 500)) {
        ready = true;
        break;
      }
      await sleep(100);
    }
    if (ready && child.exitCode === null) {
      const url =
        kind === "git-daemon"
          ? `git://${urlHost(host)}:${port}/${repo.name}`
          : `http://${urlHost(host)}:${port}/${repo.name}`;
      return { kind, url, port, pid: child.pid, stop: server.stop };
    }
    await server.stop();
    const spawnError = server.spawnError();
    lastError = spawnError
      ? `cannot start ${file}: ${spawnError}`
      : server.stderrTail().trim().split("\n").slice(-3).join("; ") ||
        `it did not accept connections on ${host}:${port}`;
    if (!/address already in use|EADDRINUSE/i.test(lastError)) break;
  }
  const name = kind === "git-daemon" ? "git daemon" : "python3 -m http.server";
  throw new Error(`${name} did not start on ${host}: ${lastError}`);
}
