/**
 * Real OpenSSH for tests: key pairs made by ssh-keygen, and sshd processes run in the foreground
 * (`sshd -D -e -f CONF`) with their own host key and an authorized_keys file the test writes, inside a
 * network namespace when given one. Stopped by their own pid.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const SSHD = "/usr/sbin/sshd";

/** Why the sshd tests cannot run here, or undefined when they can. */
export function sshdSkipReason(): string | undefined {
  if (!existsSync(SSHD)) return "sshd is not installed (apt-get install openssh-server)";
  const keygen = spawnSync("ssh-keygen", ["-?"], { encoding: "utf8", timeout: 5000 });
  if (keygen.error) return "ssh-keygen is not installed (apt-get install openssh-client)";
  return undefined;
}

export interface KeyPair {
  /** The private key file. */
  path: string;
  /** "ssh-ed25519 AAAA..." without the comment. */
  publicKey: string;
}

/** A new key pair (ed25519 unless told), optionally encrypted with a passphrase. */
export function makeKey(path: string, options: { type?: string; passphrase?: string } = {}): KeyPair {
  const result = spawnSync(
    "ssh-keygen",
    [
      "-q",
      "-t",
      options.type ?? "ed25519",
      // Test keys: a short RSA key and few KDF rounds for an encrypted one keep the tests quick.
      ...(options.type === "rsa" ? ["-b", "2048"] : []),
      ...(options.passphrase ? ["-a", "2"] : []),
      "-N",
      options.passphrase ?? "",
      "-C",
      "agentlab-test",
      "-f",
      path,
    ],
    { encoding: "utf8", timeout: 30_000 },
  );
  if (result.status !== 0) throw new Error(`ssh-keygen -f ${path}: ${result.stderr}`);
  const [type, blob] = readFileSync(`${path}.pub`, "utf8").trim().split(/\s+/);
  return { path, publicKey: `${type} ${blob}` };
}

/** ssh-keygen's own fingerprint of a public key: what messages must show. */
export function keygenFingerprint(pubPath: string): string {
  const result = spawnSync("ssh-keygen", ["-l", "-E", "sha256", "-f", pubPath], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`ssh-keygen -lf ${pubPath}: ${result.stderr}`);
  return result.stdout.split(/\s+/)[1]!;
}

export interface SshdOptions {
  /** Directory for its config and log. */
  dir: string;
  name: string;
  listen: string;
  hostKey: string;
  authorizedKeys: string;
  /** ip netns exec into this namespace first. */
  netns?: string;
}

export interface RunningSshd {
  proc: ChildProcess;
  log(): string;
  stop(): Promise<void>;
}

/**
 * Starts sshd and resolves once it listens ("Server listening on" in its -e log). Root login is by key
 * only; the authorized_keys path is the test's (StrictModes off: it lives in a temp directory).
 */
export async function startSshd(options: SshdOptions): Promise<RunningSshd> {
  // sshd refuses to start without its privilege separation directory (made by the service unit).
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const conf = join(options.dir, `${options.name}.sshd_config`);
  writeFileSync(
    conf,
    [
      `ListenAddress ${options.listen}`,
      `HostKey ${options.hostKey}`,
      `AuthorizedKeysFile ${options.authorizedKeys}`,
      `PidFile ${join(options.dir, `${options.name}.pid`)}`,
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      "AllowTcpForwarding yes",
      "PermitTTY yes",
      "LogLevel VERBOSE",
      "",
    ].join("\n"),
  );
  const argv = [SSHD, "-D", "-e", "-f", conf];
  const [file, ...args] = options.netns ? ["ip", "netns", "exec", options.netns, ...argv] : argv;
  const proc = spawn(file!, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr?.on("data", (chunk: Buffer) => (log += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    const onData = () => {
      if (log.includes("Server listening on")) {
        proc.stderr?.off("data", onData);
        proc.off("exit", onExit);
        resolve();
      }
    };
    const onExit = (code: number | null) => reject(new Error(`sshd ${options.name} exited ${code}: ${log}`));
    proc.stderr?.on("data", onData);
    proc.once("exit", onExit);
  });
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    else proc.once("exit", () => resolve());
  });
  return {
    proc,
    log: () => log,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null && proc.pid !== undefined) {
        process.kill(proc.pid, "SIGTERM");
      }
      await exited;
    },
  };
}
