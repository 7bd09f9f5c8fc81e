/**
 * The one errors table that crosses the socket.
 *
 * Every failure the daemon or the CLI reports has a stable string code. The code decides the numeric
 * JSON-RPC error code on the wire (outside the ranges JSON-RPC reserves), the CLI exit status, and the
 * hint printed when the thrower did not give a more specific one. Codes are part of the public contract:
 * add new ones, never rename or renumber existing ones.
 */

export interface ErrorSpec {
  /** JSON-RPC error code used on the wire. Reserved ranges -32768..-32000 are avoided on purpose. */
  rpc: number;
  /** Process exit status the CLI uses for this error. */
  exit: 1 | 2;
  /** What to do next, used when the thrower gives no hint of its own. */
  hint: string;
}

export const ERROR_CODES = {
  INTERNAL: { rpc: 1000, exit: 1, hint: "check the daemon log: journalctl -u agentlabd -n 100" },
  // The two JSON-RPC standard codes keep their standard numbers so generic clients understand them.
  INVALID_PARAMS: { rpc: -32602, exit: 2, hint: "run the command with --help to see the accepted flags" },
  METHOD_NOT_FOUND: {
    rpc: -32601,
    exit: 1,
    hint: "the daemon does not know this method: make sure agentlab and agentlabd are the same version",
  },
  USAGE: { rpc: 1003, exit: 2, hint: "run the command with --help to see the accepted flags" },
  CANCELLED: { rpc: 1004, exit: 1, hint: "the operation was cancelled before it finished" },
  CONFLICT: { rpc: 1005, exit: 1, hint: "re-read the current state and retry" },
  NOT_FOUND: { rpc: 1006, exit: 1, hint: "list what exists with the matching list command" },
  ROOT_REQUIRED: { rpc: 1007, exit: 1, hint: "run the command as root, e.g. with sudo" },

  CONFIG_INVALID: {
    rpc: 1100,
    exit: 1,
    hint: "fix the named key in the config file, then restart the daemon: systemctl restart agentlabd",
  },
  PROFILE_INVALID: {
    rpc: 1101,
    exit: 1,
    hint: "fix the named key in the profile file, then restart the daemon: systemctl restart agentlabd",
  },
  PROFILE_NOT_FOUND: { rpc: 1102, exit: 1, hint: "list the loaded profiles: agentlab profile list" },

  DB_LOCKED: {
    rpc: 1200,
    exit: 1,
    hint: "another process holds the database: ps aux | grep agentlabd; lsof <db>; stop it or restart the daemon",
  },
  DB_CORRUPT: {
    rpc: 1201,
    exit: 1,
    hint: 'stop the daemon, back up the database, then run sqlite3 <db> "PRAGMA integrity_check;"',
  },
  DB_TOO_NEW: {
    rpc: 1202,
    exit: 1,
    hint: "this database was written by a newer agentlabd: install that version or restore a backup",
  },
  DB_UNAVAILABLE: { rpc: 1203, exit: 1, hint: "check that the database path exists and is writable" },

  DAEMON_UNREACHABLE: {
    rpc: 1300,
    exit: 1,
    hint: "check the daemon: systemctl status agentlabd; ls -l <socket>; systemctl start agentlabd",
  },
  DAEMON_TIMEOUT: {
    rpc: 1301,
    exit: 1,
    hint: "the daemon may be busy: check journalctl -u agentlabd -f, or raise the limit, e.g. agentlab --timeout 5m status",
  },
  SOCKET_PERMISSION: {
    rpc: 1302,
    exit: 1,
    hint: "join the agentlab group: sudo usermod -aG agentlab $USER, then log in again",
  },
  SOCKET_IN_USE: {
    rpc: 1303,
    exit: 1,
    hint: "another agentlabd is already serving this socket: systemctl status agentlabd",
  },
  DAEMON_SHUTTING_DOWN: { rpc: 1304, exit: 1, hint: "the daemon is stopping; retry once it is back" },
  PROTOCOL_MISMATCH: {
    rpc: 1305,
    exit: 1,
    hint: "the daemon answered something this CLI does not understand: make sure agentlab and agentlabd are the same version",
  },
  NODE_UNSUPPORTED: { rpc: 1306, exit: 1, hint: "install Node.js 20.19 or newer" },
  DAEMON_BUSY: {
    rpc: 1307,
    exit: 1,
    hint: "too many clients are connected: retry shortly, or raise rpc_max_connections in the daemon's config",
  },
  PROXMOX_ERROR: { rpc: 1400, exit: 1, hint: "check the Proxmox task log: pvesh get /nodes/<node>/tasks" },
  PROXMOX_VM_NOT_FOUND: { rpc: 1401, exit: 1, hint: "the VM no longer exists in Proxmox: check qm list" },
  PROXMOX_LOCKED: {
    rpc: 1402,
    exit: 1,
    hint: "another Proxmox operation holds the VM; wait for it, or clear a stale lock with qm unlock <vmid>",
  },
  PROXMOX_PERMISSION: {
    rpc: 1403,
    exit: 1,
    hint: "grant the AgentLab role (docs/runbook.md, API backend install) on the path named to the user AND to the token (privilege separation); agentlab init lists what is missing",
  },
  PROXMOX_AUTH: {
    rpc: 1404,
    exit: 1,
    hint: "check proxmox_api_token (USER@REALM!TOKENID=SECRET): pveum user token list <user>",
  },
  PROXMOX_UNREACHABLE: {
    rpc: 1405,
    exit: 1,
    hint: "check proxmox_api_url and that pveproxy runs: systemctl status pveproxy",
  },
  PROXMOX_TLS: {
    rpc: 1406,
    exit: 1,
    hint: "set proxmox_tls_ca_path: /etc/pve/pve-root-ca.pem (or proxmox_tls_insecure: true for a lab)",
  },
  PROXMOX_TASK_FAILED: {
    rpc: 1407,
    exit: 1,
    hint: "read the task log: pvesh get /nodes/<node>/tasks/<upid>/log",
  },
  PROXMOX_TIMEOUT: {
    rpc: 1408,
    exit: 1,
    hint: "Proxmox did not answer in proxmox_command_timeout, or a task ran longer than proxmox_task_timeout; check the host load and raise the timeout if needed",
  },
  PROXMOX_INVALID: { rpc: 1409, exit: 1, hint: "Proxmox refused a parameter; the details name it" },
  GUEST_AGENT_NOT_READY: {
    rpc: 1410,
    exit: 1,
    hint: "the guest agent is not answering yet; check that qemu-guest-agent is installed and agent: 1 is set",
  },
  STORAGE_UNSUPPORTED: {
    rpc: 1411,
    exit: 1,
    hint: "use a storage of type zfspool, lvmthin or dir (qcow2) for workspaces",
  },
  SANDBOX_NOT_FOUND: { rpc: 1500, exit: 1, hint: "list sandboxes with agentlab sandbox list --all" },
  INVALID_TRANSITION: { rpc: 1501, exit: 1, hint: "check the sandbox state: agentlab sandbox show <vmid>" },
  INVALID_STATE: { rpc: 1502, exit: 1, hint: "check the sandbox state: agentlab sandbox show <vmid>" },
  LEASE_NOT_RENEWABLE: {
    rpc: 1503,
    exit: 1,
    hint: "only RUNNING sandboxes renew; a TIMEOUT one is gone: agentlab sandbox destroy --force <vmid>, then agentlab sandbox new --profile <profile> --ttl <ttl>",
  },
  PROVISIONING_FAILED: {
    rpc: 1504,
    exit: 1,
    hint: "see the reason with agentlab sandbox show <vmid>; check the template (qm list) and storage (pvesh get /storage)",
  },
  DESTROY_FAILED: { rpc: 1505, exit: 1, hint: "use --force: agentlab sandbox destroy --force <vmid>" },
  SNAPSHOT_NOT_FOUND: {
    rpc: 1510,
    exit: 1,
    hint: "list the sandbox's snapshots: agentlab sandbox snapshot list <vmid>",
  },
  CONFIRMATION_REQUIRED: {
    rpc: 1511,
    exit: 2,
    hint: "add --force to go ahead without the question, or run the command in a terminal to answer it",
  },

  WORKSPACE_NOT_FOUND: { rpc: 1600, exit: 1, hint: "list workspaces with agentlab workspace list" },
  WORKSPACE_ATTACHED: {
    rpc: 1601,
    exit: 1,
    hint: "detach it first: agentlab workspace detach <workspace>, or stop the session using it: agentlab session stop <session>",
  },
  // Upstream answered a held lease with HTTP 409; here it is a code of its own, never a generic failure.
  WORKSPACE_LEASE_HELD: {
    rpc: 1602,
    exit: 1,
    hint: "wait for the holder to finish, or if that holder is gone: agentlab workspace lease clear <workspace>",
  },
  WORKSPACE_BUSY: {
    rpc: 1603,
    exit: 1,
    hint: "another operation on this workspace is in progress: wait for it (agentlab workspace show <workspace>), then retry",
  },
  SNAPSHOT_NOT_LATEST: {
    rpc: 1604,
    exit: 1,
    hint: "nothing was changed. To keep the newer snapshots, fork instead: agentlab workspace fork <workspace> --name <new> --from-snapshot <snapshot>",
  },
  HOST_TOOLS_UNAVAILABLE: {
    rpc: 1605,
    exit: 1,
    hint: "run agentlabd on the workspace's node with host_tools auto or on, or use a maintenance sandbox",
  },
  SESSION_NOT_FOUND: { rpc: 1700, exit: 1, hint: "list sessions with agentlab session list" },
  JOB_NOT_FOUND: { rpc: 1800, exit: 1, hint: "list jobs with agentlab job list" },
  ARTIFACT_NOT_FOUND: {
    rpc: 1801,
    exit: 1,
    hint: "list the job's artifacts with agentlab job artifacts <job_id>",
  },
  JOB_NOT_ACTIVE: {
    rpc: 1802,
    exit: 1,
    hint: "the job already ended; see how with agentlab job show <job_id>",
  },

  // Remote control (docs/remote.md): the HTTPS + WebSocket listener, its tokens and the client's pinning.
  TOKEN_INVALID: {
    rpc: 1900,
    exit: 1,
    hint: "check the token you gave (--token, AGENTLAB_TOKEN or agentlab connect); on the daemon's host: agentlab token list, agentlab token create --name <name>",
  },
  TOKEN_EXPIRED: {
    rpc: 1901,
    exit: 1,
    hint: "create a new token on the daemon's host (agentlab token create --name <name> --ttl <duration>), then: agentlab connect --endpoint <url> --token <new token>",
  },
  TOKEN_REVOKED: {
    rpc: 1902,
    exit: 1,
    hint: "this token was revoked; ask for a new one (agentlab token create --name <name> on the daemon's host), then: agentlab connect --endpoint <url> --token <new token>",
  },
  SCOPE_REQUIRED: {
    rpc: 1903,
    exit: 1,
    hint: "use a token with the needed scope: agentlab token create --name <name> --scope <scope> on the daemon's host",
  },
  NOT_OWNER: {
    rpc: 1904,
    exit: 1,
    hint: "this token acts only on what it created; use the token that created it, or one made with agentlab token create --scope operate --all",
  },
  ADDRESS_NOT_ALLOWED: {
    rpc: 1905,
    exit: 1,
    hint: "add your address (or its network) to control_allow_cidrs in the daemon's config.yaml, then restart agentlabd",
  },
  REMOTE_NOT_ALLOWED: {
    rpc: 1906,
    exit: 1,
    hint: "run this command on the daemon's host, over the local socket",
  },
  ENDPOINT_UNREACHABLE: {
    rpc: 1907,
    exit: 1,
    hint: "check the URL and port (default 8845), that agentlabd has control_listen set, and your route to the host (tailscale status; curl -k <url>/health)",
  },
  FINGERPRINT_MISMATCH: {
    rpc: 1908,
    exit: 1,
    hint: "the server's certificate changed since it was pinned; if that is expected (new certificate), pin it again: agentlab connect --endpoint <url> --token <token> --fingerprint <new fingerprint>",
  },
  CERTIFICATE_UNTRUSTED: {
    rpc: 1909,
    exit: 1,
    hint: "pin the server's certificate on first use: agentlab connect --endpoint <url> --token <token>",
  },
  CONTROL_LISTEN_FAILED: {
    rpc: 1910,
    exit: 1,
    hint: "fix control_listen (or control_tls_cert / control_tls_key) in the config file, then restart the daemon: systemctl restart agentlabd",
  },
  METRICS_LISTEN_FAILED: {
    rpc: 1911,
    exit: 1,
    hint: "fix metrics_listen in the config file (or leave it empty to serve no metrics), then restart the daemon: systemctl restart agentlabd",
  },
  // sandbox exec: raised by the daemon, which connects to the guest over SSH with its own key.
  GUEST_UNREACHABLE: {
    rpc: 2000,
    exit: 1,
    hint: "check that the sandbox is RUNNING with an IP (agentlab sandbox show <vmid>) and that its sshd is up",
  },
  GUEST_AUTH_FAILED: {
    rpc: 2001,
    exit: 1,
    hint: "the guest refused agentlabd's SSH key; a sandbox created before agentlabd had its key does not carry it: recreate it",
  },
  HOST_KEY_MISMATCH: {
    rpc: 2002,
    exit: 1,
    hint: "the guest's SSH host key is not the one it reported when it booted; if the guest was rebuilt on purpose, recreate the sandbox",
  },
  // sandbox cp: raised by the daemon (SFTP in the guest) or by the CLI (the local side of a copy).
  FILE_NOT_FOUND: {
    rpc: 2010,
    exit: 1,
    hint: "check the path: a guest path is absolute or relative to the login user's home (agentlab sandbox exec <vmid> -- ls -la <dir>)",
  },
  FILE_PERMISSION: {
    rpc: 2011,
    exit: 1,
    hint: "the user the copy runs as may not read or write that path: pick a path it owns, or copy as another user with --user",
  },
  FILE_IS_DIRECTORY: {
    rpc: 2012,
    exit: 1,
    hint: "copy a directory with -r, or name a file path",
  },
  FILE_NOT_DIRECTORY: {
    rpc: 2013,
    exit: 1,
    hint: "a directory cannot replace a file: name another destination, or remove the file first",
  },
  FILE_TRANSFER_FAILED: {
    rpc: 2014,
    exit: 1,
    hint: "the destination was left as it was; check free space where the file goes (df -h) and retry",
  },
  // agentlab ssh: raised by the CLI itself (it connects to the sandbox, not the daemon).
  SSH_UNREACHABLE: {
    rpc: 2200,
    exit: 1,
    hint: "check the route to the sandbox's address, or go through a jump host: agentlab ssh <vmid> --jump-host <host> --jump-user <user>",
  },
  SSH_HOST_KEY_MISMATCH: {
    rpc: 2201,
    exit: 1,
    hint: "the server is not the one whose key was recorded: do not continue until you know why",
  },
  SSH_HOST_KEY_UNKNOWN: {
    rpc: 2202,
    exit: 1,
    hint: "agentlab ssh only connects to hosts whose key it can check; see the message for where the key is missing",
  },
  SSH_AUTH_FAILED: {
    rpc: 2203,
    exit: 1,
    hint: "give the key sandboxes trust (ssh_public_key_path in the daemon's config): agentlab ssh <vmid> --identity <private key>",
  },
  SSH_KEY_UNUSABLE: {
    rpc: 2204,
    exit: 1,
    hint: "give a readable private key with --identity, or load it into ssh-agent: ssh-add <key>",
  },
  SSH_FAILED: {
    rpc: 2205,
    exit: 1,
    hint: "retry; if it persists, compare with OpenSSH: agentlab ssh <vmid> --print shows the equivalent ssh command",
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(ERROR_CODES, value);
}

/** Look a code up from its wire number; unknown numbers map to undefined. */
export function codeFromRpc(rpc: number): ErrorCode | undefined {
  for (const [code, spec] of Object.entries(ERROR_CODES)) {
    if (spec.rpc === rpc) return code as ErrorCode;
  }
  return undefined;
}

export type ErrorDetails = Record<string, unknown>;

export interface AgentlabErrorOptions {
  hint?: string;
  details?: ErrorDetails;
  cause?: unknown;
}

/** The wire shape of an error's `data` field, and the body of `--json` error output. */
export interface ErrorData {
  code: ErrorCode;
  hint: string;
  details: ErrorDetails;
}

/**
 * An error with a stable code, a human message (the spec's wording where it fixes one) and a hint.
 * Thrown by services, converted to a JSON-RPC ResponseError by the daemon's RPC layer only, and
 * rebuilt from the response by the CLI.
 */
export class AgentlabError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details: ErrorDetails;

  constructor(code: ErrorCode, message: string, options: AgentlabErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "AgentlabError";
    this.code = code;
    this.hint = options.hint ?? ERROR_CODES[code].hint;
    this.details = options.details ?? {};
  }

  get rpcCode(): number {
    return ERROR_CODES[this.code].rpc;
  }

  get exitCode(): 1 | 2 {
    return ERROR_CODES[this.code].exit;
  }

  toData(): ErrorData {
    return { code: this.code, hint: this.hint, details: this.details };
  }
}
