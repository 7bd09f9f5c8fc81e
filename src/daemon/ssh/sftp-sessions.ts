/**
 * SFTP sessions to guests kept open between the requests of one copy: `sandbox cp` moves a file in
 * chunks of one request each, and an SSH handshake per chunk would cost more than the chunk. A session
 * is keyed by everything its login checked (sandbox, address, user, recorded host keys), so a sandbox
 * that got another address or keys gets a new, freshly verified connection. Idle sessions close.
 */
import type { Client } from "ssh2";
import { connectGuest, type GuestTarget } from "./client.js";
import type { SshIdentity } from "./identity.js";
import { openSftp, Sftp } from "./sftp.js";

/** A copy asks for its next chunk within milliseconds; a session unused this long is closed. */
export const SFTP_IDLE_MS = 15_000;

interface Entry {
  ready: Promise<{ client: Client; sftp: Sftp }>;
  timer?: NodeJS.Timeout;
}

export class SftpSessions {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly identity: SshIdentity,
    private readonly idleMs = SFTP_IDLE_MS,
  ) {}

  /** An open session for the target: the cached one, or a new connection (host key checked). */
  async get(target: GuestTarget, signal: AbortSignal): Promise<Sftp> {
    const key = JSON.stringify([target.vmid, target.host, target.port ?? 22, target.user, target.hostKeys]);
    let entry = this.entries.get(key);
    if (!entry) {
      const ready = this.open(key, target, signal);
      entry = { ready };
      this.entries.set(key, entry);
      // A failed login is not cached: the next request tries again (and reports afresh).
      ready.catch(() => {
        if (this.entries.get(key) === entry) this.entries.delete(key);
      });
    }
    const { sftp } = await entry.ready;
    this.touch(key, entry);
    return sftp;
  }

  /** Close every session of a sandbox (its connection failed mid-request: the next one reconnects). */
  drop(vmid: number): void {
    for (const [key, entry] of this.entries) {
      if (JSON.parse(key)[0] !== vmid) continue;
      this.entries.delete(key);
      clearTimeout(entry.timer);
      entry.ready.then(({ client }) => client.end()).catch(() => {});
    }
  }

  private async open(key: string, target: GuestTarget, signal: AbortSignal) {
    const client = await connectGuest(target, this.identity, signal);
    // Gone (the guest stopped, sshd restarted, idle close): forget it, so the next request reconnects.
    const forget = () => {
      const entry = this.entries.get(key);
      if (entry) {
        clearTimeout(entry.timer);
        entry.ready.then((open) => open.client === client && this.entries.delete(key)).catch(() => {});
      }
    };
    client.on("close", forget);
    client.on("error", forget);
    try {
      return { client, sftp: new Sftp(await openSftp(client)) };
    } catch (error) {
      client.end();
      throw error;
    }
  }

  private touch(key: string, entry: Entry): void {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      if (this.entries.get(key) !== entry) return;
      this.entries.delete(key);
      entry.ready.then(({ client }) => client.end()).catch(() => {});
    }, this.idleMs);
    entry.timer.unref();
  }
}
