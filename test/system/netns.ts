/**
 * Network namespaces for system tests: create, run commands inside, start probe listeners, tear down.
 *
 * Everything a test creates lives inside namespaces it names itself (prefix `alnt<pid>-`): no interface,
 * address, route or rule is added to the machine's own namespace, and all traffic stays between those
 * namespaces. Commands are argument arrays (execa), always with a timeout.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";

export const NETPROBE = fileURLToPath(new URL("./netprobe.js", import.meta.url));
const PREFIX = "alnt";

/** Why the namespace tests cannot run here, or undefined when they can. */
export function netnsSkipReason(): string | undefined {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "needs root (network namespaces and nftables)";
  const ip = spawnSync("ip", ["netns", "list"], { encoding: "utf8", timeout: 5000 });
  if (ip.error || ip.status !== 0) return "`ip netns` is unavailable (apt-get install iproute2)";
  const nft = spawnSync("nft", ["--version"], { encoding: "utf8", timeout: 5000 });
  if (nft.error || nft.status !== 0) return "`nft` is unavailable (apt-get install nftables)";
  return undefined;
}

export interface RunOutput {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Run a command in the machine's namespace (only `ip netns ...` management goes here). */
export async function run(file: string, args: readonly string[], timeoutMs = 15_000): Promise<RunOutput> {
  const result = await execa(file, [...args], { reject: false, timeout: timeoutMs, stdin: "ignore" });
  if (result.timedOut) throw new Error(`${file} ${args.join(" ")}: timed out after ${timeoutMs} ms`);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Namespaces left by earlier runs of these tests that died before cleaning up (their pid is gone). */
export async function removeStaleNamespaces(): Promise<string[]> {
  const list = await run("ip", ["netns", "list"]);
  const removed: string[] = [];
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const match = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!match || isAlive(Number(match[1]))) continue;
    await run("ip", ["netns", "del", name]);
    removed.push(name);
  }
  return removed;
}

interface Probe {
  ns: string;
  child: ResultPromise;
  lines: string[];
}

/** A set of namespaces owned by one test, and the processes started in them. */
export class NetnsLab {
  readonly namespaces: string[] = [];
  private readonly probes: Probe[] = [];
  readonly id = `${PREFIX}${process.pid}`;

  name(role: string): string {
    return `${this.id}-${role}`;
  }

  async addNamespace(role: string): Promise<string> {
    const ns = this.name(role);
    const result = await run("ip", ["netns", "add", ns]);
    if (result.exitCode !== 0) throw new Error(`ip netns add ${ns}: ${result.stderr.trim()}`);
    this.namespaces.push(ns);
    await this.must(ns, "ip", ["link", "set", "lo", "up"]);
    return ns;
  }

  /** Run inside a namespace; resolves with the exit code (never rejects on a non-zero exit). */
  async exec(
    ns: string,
    file: string,
    args: readonly string[],
    options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {},
  ): Promise<RunOutput> {
    const timeoutMs = options.timeoutMs ?? 15_000;
    const result = await execa("ip", ["netns", "exec", ns, file, ...args], {
      reject: false,
      timeout: timeoutMs,
      ...(options.input === undefined ? { stdin: "ignore" as const } : { input: options.input }),
      ...(options.env ? { env: options.env } : {}),
    });
    if (result.timedOut)
      throw new Error(`[${ns}] ${file} ${args.join(" ")}: timed out after ${timeoutMs} ms`);
    return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
  }

  /** Like exec, but a non-zero exit is an error. */
  async must(ns: string, file: string, args: readonly string[]): Promise<string> {
    const result = await this.exec(ns, file, args);
    if (result.exitCode !== 0) {
      throw new Error(`[${ns}] ${file} ${args.join(" ")} exited ${result.exitCode}: ${result.stderr.trim()}`);
    }
    return result.stdout;
  }

  /** Set a sysctl of the namespace (written by netprobe, so procps is not needed). */
  async sysctl(ns: string, key: string, value: string): Promise<void> {
    await this.must(ns, process.execPath, [NETPROBE, "sysctl", key, value]);
  }

  /**
   * Start a probe listener in a namespace; resolves once it listens. It exits by itself after maxMs
   * (10 minutes unless given: a suite that needs it longer says so), or when the lab is destroyed.
   */
  async listen(
    ns: string,
    ports: { tcp?: number[]; udp?: number[] },
    { maxMs = 600_000 }: { maxMs?: number } = {},
  ): Promise<Probe> {
    const args = [NETPROBE, "listen", "--max-ms", String(maxMs)];
    if (ports.tcp?.length) args.push("--tcp", ports.tcp.join(","));
    if (ports.udp?.length) args.push("--udp", ports.udp.join(","));
    const child = execa("ip", ["netns", "exec", ns, process.execPath, ...args], {
      reject: false,
      stdin: "ignore",
      buffer: false,
      timeout: maxMs,
    });
    const probe: Probe = { ns, child, lines: [] };
    this.probes.push(probe);
    let partial = "";
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`[${ns}] listener not ready in 10 s: ${stderr}`)),
        10_000,
      );
      child.stdout?.on("data", (chunk: Buffer) => {
        partial += chunk.toString();
        const parts = partial.split("\n");
        partial = parts.pop() ?? "";
        for (const line of parts) {
          if (line === "ready") {
            clearTimeout(timer);
            resolve();
          } else probe.lines.push(line);
        }
      });
      child.once("exit", () => {
        clearTimeout(timer);
        reject(new Error(`[${ns}] listener exited: ${stderr}`));
      });
    });
    return probe;
  }

  /** TCP connect from a namespace: open | refused | unreachable | timeout | error:<code>. */
  async connect(ns: string, host: string, port: number, options: { timeoutMs?: number; from?: string } = {}) {
    const timeoutMs = options.timeoutMs ?? 1500;
    const args = [NETPROBE, "connect", host, String(port), String(timeoutMs)];
    if (options.from) args.push(options.from);
    const result = await this.exec(ns, process.execPath, args, { timeoutMs: timeoutMs + 10_000 });
    return result.stdout.trim() || `error:${result.stderr.trim()}`;
  }

  /** One UDP datagram from a namespace (optionally from a source address it does not own). */
  async udpSend(ns: string, host: string, port: number, payload: string, from?: string): Promise<string> {
    const args = [NETPROBE, "udp-send", host, String(port), payload];
    if (from) args.push(from);
    const result = await this.exec(ns, process.execPath, args);
    return result.stdout.trim() || `error:${result.stderr.trim()}`;
  }

  /** ping -c 1: true when a reply came back. */
  async ping(ns: string, host: string, options: { timeoutS?: number; from?: string } = {}): Promise<boolean> {
    const args = ["-n", "-c", "1", "-W", String(options.timeoutS ?? 1)];
    if (options.from) args.push("-I", options.from);
    args.push(host);
    const result = await this.exec(ns, "ping", args);
    return result.exitCode === 0;
  }

  /** Stop every probe (by its pid) and delete every namespace; never throws. */
  async destroy(): Promise<string[]> {
    const problems: string[] = [];
    for (const probe of this.probes) {
      const pid = probe.child.pid;
      if (pid !== undefined && probe.child.exitCode === null) {
        try {
          process.kill(pid, "SIGTERM");
        } catch {
          // already gone
        }
      }
    }
    await Promise.all(
      this.probes.map((probe) =>
        Promise.race([probe.child, new Promise((resolve) => setTimeout(resolve, 3000))]).catch(
          () => undefined,
        ),
      ),
    );
    for (const probe of this.probes) {
      const pid = probe.child.pid;
      if (pid !== undefined && probe.child.exitCode === null && isAlive(pid)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    for (const ns of [...this.namespaces].reverse()) {
      const result = await run("ip", ["netns", "del", ns]).catch((error: Error) => ({
        exitCode: -1,
        stdout: "",
        stderr: error.message,
      }));
      if (result.exitCode !== 0) problems.push(`ip netns del ${ns}: ${result.stderr.trim()}`);
    }
    this.namespaces.length = 0;
    return problems;
  }
}
