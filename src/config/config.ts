/**
 * The daemon's config.yaml: schema, defaults, derived values and the loader.
 *
 * Keys and defaults follow upstream agentlab (spec §8.3) so an existing config file keeps working. What
 * differs on purpose: every problem in the file is reported at once; unknown keys warn instead of being
 * silently dropped; relative paths are taken from the config file's directory (so a test can run the
 * daemon from a temp dir); durations are exposed in milliseconds under `<key>_ms`.
 */
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { AgentlabError } from "../protocol/errors.js";
import { formatDuration } from "../protocol/units.js";
import {
  bool,
  duration,
  matching,
  name,
  nonNegativeInt,
  numberBetween,
  oneOf,
  positiveInt,
  positiveNumber,
  stringList,
  text,
} from "./fields.js";
import { deriveAgentSubnet, isCidr, isLoopbackHost, isWildcardHost, parseHostPort } from "./net.js";
import { checkDocument, describeValue, isMapping, type Problem, withoutBlanks } from "./validate.js";
import { readYamlDocument } from "./yaml.js";

/** The secret half of a token is a UUID; Proxmox compares it case-insensitively, proxmox-api wants lower case. */
function lowerSecret(token: string): string {
  const eq = token.lastIndexOf("=");
  return eq < 0 ? token : `${token.slice(0, eq + 1)}${token.slice(eq + 1).toLowerCase()}`;
}

export const DEFAULT_CONFIG_PATH = "/etc/agentlab/config.yaml";

/** The config file the daemon reads: AGENTLAB_CONFIG when set, else the packaged location. */
export function configPathFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env["AGENTLAB_CONFIG"]?.trim();
  return fromEnv ? fromEnv : DEFAULT_CONFIG_PATH;
}

export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const MINUTE_MS = 60_000;

/** Fully resolved settings: every default applied, every path absolute, every duration in ms. */
export interface Config {
  profiles_dir: string;
  data_dir: string;
  run_dir: string;
  socket_path: string;
  db_path: string;
  artifact_dir: string;
  log_level: LogLevel;
  bootstrap_listen: string;
  artifact_listen: string;
  agent_subnet: string;
  controller_url: string;
  artifact_upload_url: string;
  /** "" when the metrics listener is disabled. */
  metrics_listen: string;
  /** Whether metrics_listen may name a host other than loopback (the scrape carries no token). */
  metrics_allow_remote: boolean;
  snippets_dir: string;
  snippet_storage: string;
  /** The key injected into guests: inline, or read from ssh_public_key_path at load. "" when neither is set. */
  ssh_public_key: string;
  ssh_public_key_path: string;
  proxmox_backend: "shell" | "api";
  proxmox_clone_mode: "linked" | "full";
  /** Per-sandbox nftables bindings: auto = when the agentlab ruleset is loaded. */
  network_isolation: "auto" | "on" | "off";
  proxmox_api_url: string;
  /** USER@REALM!TOKENID=SECRET, without any "PVEAPIToken=" prefix; "" for the shell backend. */
  proxmox_api_token: string;
  /** "" means: discover the node at first use. */
  proxmox_node: string;
  proxmox_tls_insecure: boolean;
  proxmox_tls_ca_path: string;
  proxmox_command_timeout_ms: number;
  /** How long one Proxmox task (clone, create, start, destroy, ...) may run before it is stopped. */
  proxmox_task_timeout_ms: number;
  /** Proxmox reads (GET: a pvesh process or an HTTPS request) in flight at once; more wait in line. */
  proxmox_max_reads: number;
  /** Proxmox changes (clone, start, config, ...) in flight at once; on pvesh each holds its slot for its task. */
  proxmox_max_writes: number;
  /** How long a cluster VM list (/cluster/resources) is reused; 0 = read it for every caller not already waiting. */
  proxmox_cluster_list_ttl_ms: number;
  /** Host programs (nft, ip, e2fsck, blkid, ...) the daemon runs at once; more wait in line. */
  host_max_tools: number;
  provisioning_timeout_ms: number;
  /** How many warm pool members (all profiles together) may be provisioned at once (docs/warm-pool.md). */
  warm_pool_concurrency: number;
  /** After the guest agent reports the address, how long to wait for the phone-home (cloud-init's end). */
  phone_home_grace_ms: number;
  orphan_grace_period_ms: number;
  idle_stop_enabled: boolean;
  idle_stop_interval_ms: number;
  idle_stop_minutes_default: number;
  idle_stop_cpu_threshold: number;
  /** A job's artifacts together, in bytes: an upload that would pass it is refused with 413. */
  artifact_max_bytes: number;
  /** How many artifacts one job may upload. */
  artifact_max_files: number;
  artifact_token_ttl_minutes: number;
  /** Guest listener requests per second per source address (token bucket refill). */
  bootstrap_rate_limit_qps: number;
  /** Guest listener requests a source address may make at once after a quiet spell. */
  bootstrap_rate_limit_burst: number;
  /** How long the daemon lets in-flight calls finish after SIGTERM. */
  shutdown_timeout_ms: number;
  /** RPC clients served at once, Unix socket and remote listener together; more are refused. */
  rpc_max_connections: number;
  /** Unix-socket connections one user (not root) may hold at once; 0 is no cap. */
  rpc_max_connections_per_client: number;
  /** An RPC connection with no call running and nothing received for this long is closed. */
  rpc_idle_timeout_ms: number;
  /** Answers a client has not read yet, in bytes; past this its connection is closed. */
  rpc_max_unsent_bytes: number;
  /** Storage for new workspaces when `workspace create` names none. */
  workspace_storage: string;
  /** TTL of attachment leases (sandbox:<vmid>, session:<id>); the daemon renews them while the owner lives. */
  workspace_lease_ttl_ms: number;
  /** e2fsck, zfs, lvchange, qemu-nbd on the workspace's node: auto = when the daemon runs on that node. */
  host_tools: "auto" | "on" | "off";
  /** `maintenance run` deletes the artifacts of jobs that ended longer ago than this; 0 keeps them. */
  artifact_retention_days: number;
  /** `maintenance run` deletes events older than this, never those of live sandboxes/jobs; 0 keeps them. */
  event_retention_days: number;
  /** The remote control listener (HTTPS + WebSocket, docs/remote.md) as host:port; "" when it is off. */
  control_listen: string;
  /** PEM files of the listener's certificate and key; both "" = a self-signed pair under data_dir. */
  control_tls_cert: string;
  control_tls_key: string;
  /** Client networks the listener accepts; empty = every address that can reach control_listen's host. */
  control_allow_cidrs: string[];
}

/** The conventional port of the remote control listener (upstream's). */
export const DEFAULT_CONTROL_PORT = 8845;

/** control_listen as written, with the port defaulted to 8845 when only a host is given. */
export function controlListenAddress(value: string): string | undefined {
  const text = value.trim();
  if (parseHostPort(text)) return text;
  const withPort = `${text}:${DEFAULT_CONTROL_PORT}`;
  return text !== "" && parseHostPort(withPort) ? withPort : undefined;
}

const filePath = () => text("expected a path");
const listen = () =>
  matching((value) => parseHostPort(value) !== undefined, "expected host:port such as 10.77.0.1:8844");
const httpUrl = () => matching(isHttpUrl, "expected an http:// or https:// URL with a host");

const API_TOKEN_PREFIX = "PVEAPIToken=";
// Proxmox token secrets are UUIDs (pveum prints them once); proxmox-api refuses any other shape.
const API_TOKEN =
  /^(?:PVEAPIToken=)?[^@\s!=]+@[^@\s!=]+![^@\s!=]+=[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** The file as written: what each key accepts. Cross-key rules and derived values live in resolve(). */
export const ConfigFileSchema = z.strictObject({
  profiles_dir: filePath().default("/etc/agentlab/profiles"),
  data_dir: filePath().default("/var/lib/agentlab"),
  run_dir: filePath().default("/run/agentlab"),
  socket_path: filePath().optional(),
  db_path: filePath().optional(),
  artifact_dir: filePath().optional(),
  log_level: oneOf(LOG_LEVELS).default("info"),
  bootstrap_listen: listen().default("10.77.0.1:8844"),
  artifact_listen: listen().default("10.77.0.1:8846"),
  agent_subnet: matching(isCidr, "expected a CIDR such as 10.77.0.0/16").optional(),
  controller_url: httpUrl().optional(),
  artifact_upload_url: httpUrl().optional(),
  metrics_listen: listen().optional(),
  metrics_allow_remote: bool().default(false),
  snippets_dir: filePath().default("/var/lib/vz/snippets"),
  snippet_storage: name(
    /^[A-Za-z0-9._-]{1,64}$/,
    "expected a Proxmox storage name: at most 64 characters from A-Z a-z 0-9 . _ -",
  ).default("local"),
  ssh_public_key: matching(
    (value) => !value.trim().includes("\n"),
    "expected one line holding an SSH public key",
  ).optional(),
  ssh_public_key_path: filePath().optional(),
  proxmox_backend: oneOf(["shell", "api"]).default("shell"),
  proxmox_clone_mode: oneOf(["linked", "full"]).default("linked"),
  network_isolation: oneOf(["auto", "on", "off"]).default("auto"),
  proxmox_api_url: httpUrl().default("https://localhost:8006"),
  proxmox_api_token: matching(
    (value) => API_TOKEN.test(value.trim()),
    "expected an API token in the form USER@REALM!TOKENID=SECRET, where SECRET is the UUID pveum printed",
  ).optional(),
  proxmox_node: name(/^[A-Za-z0-9][A-Za-z0-9.-]*$/, "expected a Proxmox node name").optional(),
  proxmox_tls_insecure: bool().default(false),
  proxmox_tls_ca_path: filePath().optional(),
  proxmox_command_timeout: duration().optional(),
  proxmox_task_timeout: duration().optional(),
  proxmox_max_reads: positiveInt().default(8),
  proxmox_max_writes: positiveInt().default(16),
  host_max_tools: positiveInt().default(4),
  proxmox_cluster_list_ttl: duration().optional(),
  provisioning_timeout: duration().optional(),
  warm_pool_concurrency: positiveInt().default(1),
  phone_home_grace: duration().optional(),
  orphan_grace_period: duration().optional(),
  idle_stop_enabled: bool().default(true),
  idle_stop_interval: duration().optional(),
  idle_stop_minutes_default: nonNegativeInt().default(30),
  idle_stop_cpu_threshold: numberBetween(0, 1).default(0.05),
  artifact_max_bytes: positiveInt().default(268_435_456),
  artifact_max_files: positiveInt().default(1000),
  artifact_token_ttl_minutes: positiveInt().default(1440),
  bootstrap_rate_limit_qps: positiveNumber().default(1),
  bootstrap_rate_limit_burst: positiveInt().default(3),
  shutdown_timeout: duration().optional(),
  rpc_max_connections: positiveInt().default(256),
  rpc_max_connections_per_client: nonNegativeInt("expected an integer >= 0 (0: no cap per user)").default(64),
  rpc_idle_timeout: duration().optional(),
  rpc_max_unsent_bytes: positiveInt().default(16 * 1024 * 1024),
  workspace_storage: name(
    /^[A-Za-z0-9._-]{1,64}$/,
    "expected a Proxmox storage name: at most 64 characters from A-Z a-z 0-9 . _ -",
  ).default("local-zfs"),
  workspace_lease_ttl: duration().optional(),
  host_tools: oneOf(["auto", "on", "off"]).default("auto"),
  artifact_retention_days: nonNegativeInt().default(30),
  event_retention_days: nonNegativeInt().default(90),
  control_listen: matching(
    (value) => controlListenAddress(value) !== undefined,
    "expected host:port such as 100.64.0.10:8845, or a host alone for port 8845",
  ).optional(),
  control_tls_cert: filePath().optional(),
  control_tls_key: filePath().optional(),
  control_allow_cidrs: stringList("expected a list of CIDRs such as [100.64.0.0/10]").optional(),
});

type ConfigFile = z.output<typeof ConfigFileSchema>;

/**
 * Keys of upstream's config that this daemon does not implement. They are named in a warning of their
 * own so that an operator migrating a config is not told they are typos.
 */
const UPSTREAM_ONLY_KEYS = new Set([
  "log_dir",
  "control_auth_token",
  "authorized_keys_path",
  "artifact_rate_limit_qps",
  "artifact_rate_limit_burst",
  "secrets_dir",
  "secrets_bundle",
  "secrets_age_key_path",
  "secrets_sops_path",
  "proxmox_api_shell_fallback",
  "backend",
  "docker_host",
  "libvirt_uri",
  "lxc_enabled",
  "metadata_routing_enabled",
  "cli_path",
  "integrations_enabled",
  "integration_enc_key",
  "integration_target_allowlist",
  "offline",
  "trust_agent_subnet",
  "pool_total_cores",
  "pool_total_memory_mb",
  "pool_cpu_over_commit",
  "pool_mem_over_commit",
  "pool_burst_duration",
  "claude_skill_bundle_name",
  "claude_skill_bundle_version",
]);

/** Read, permission-check and parse the config file. Throws CONFIG_INVALID naming the file and key. */
export function loadConfig(file: string): { config: Config; warnings: string[] } {
  const source = path.resolve(file);
  checkConfigFile(source);
  let textContent: string;
  try {
    textContent = fs.readFileSync(source, "utf8");
  } catch (error) {
    throw new AgentlabError("CONFIG_INVALID", `config file ${source} cannot be read: ${errorText(error)}`, {
      details: { file: source },
      cause: error,
    });
  }
  return parseConfig(textContent, source);
}

/**
 * Parse config text as if it had been read from `source` (which anchors relative paths and names the file
 * in messages). Touches the disk only to read ssh_public_key_path when it is set.
 */
export function parseConfig(textContent: string, source: string): { config: Config; warnings: string[] } {
  const parsed = readYamlDocument(textContent, source);
  if (!parsed.ok) {
    throw new AgentlabError("CONFIG_INVALID", parsed.message, {
      details: { file: source, line: parsed.line },
    });
  }
  // No document, or one holding only comments: every setting at its default.
  const document = parsed.document == null ? {} : withoutBlanks(parsed.document);
  if (!isMapping(document)) {
    throw new AgentlabError(
      "CONFIG_INVALID",
      `${source}: expected a mapping of settings (key: value lines) at the top level, got ${describeValue(document)}`,
      { details: { file: source } },
    );
  }

  const checked = checkDocument(ConfigFileSchema, document, { secretKeys: new Set(["proxmox_api_token"]) });
  const warnings = checked.unknownKeys.map(({ key, suggestion }) =>
    key === "control_auth_token"
      ? `${source}: ${key}: upstream's single shared token is not used, ignored: create scoped tokens with agentlab token create (docs/remote.md)`
      : UPSTREAM_ONLY_KEYS.has(key) || key.startsWith("proxy_")
        ? `${source}: ${key}: upstream agentlab setting that this daemon does not use, ignored`
        : `${source}: ${key}: unknown key, ignored${suggestion ? ` (did you mean "${suggestion}"?)` : ""}`,
  );
  const problems = new Problems(checked.problems);
  // Keys that failed their own check are dropped from `data`, so cross-key rules still run on the rest.
  const config = resolve(checked.data ?? ConfigFileSchema.parse({}), source, problems, warnings);

  if (problems.list.length > 0) {
    // In the order the keys appear in the file, so the list reads top to bottom alongside it.
    const order = Object.keys(document);
    const rank = (key: string) => {
      const index = order.indexOf(key);
      return index === -1 ? order.length : index;
    };
    const sorted = [...problems.list].sort((a, b) => rank(a.key) - rank(b.key));
    throw new AgentlabError("CONFIG_INVALID", sorted.map((p) => `${source}: ${p.message}`).join("\n"), {
      details: { file: source, key: sorted[0]!.key, problems: sorted },
    });
  }
  return { config, warnings };
}

/** Problems keyed by config key: a key that already failed its own check gets no second complaint. */
class Problems {
  readonly list: Problem[];
  constructor(initial: Problem[]) {
    this.list = [...initial];
  }
  has(key: string): boolean {
    return this.list.some((problem) => problem.key === key);
  }
  add(key: string, message: string): void {
    if (!this.has(key)) this.list.push({ key, message });
  }
}

function resolve(file: ConfigFile, source: string, problems: Problems, warnings: string[]): Config {
  const baseDir = path.dirname(source);
  const absolute = (value: string) => path.resolve(baseDir, value);
  const optionalPath = (value: string | undefined) => (value === undefined ? "" : absolute(value));

  const dataDir = absolute(file.data_dir);
  const runDir = absolute(file.run_dir);

  const bootstrap = parseHostPort(file.bootstrap_listen)!;
  const artifact = parseHostPort(file.artifact_listen)!;
  // A wildcard bind says nothing about where guests are or how they reach the daemon: the operator must.
  if (isWildcardHost(bootstrap.host)) {
    const why = `when bootstrap_listen binds every interface (${file.bootstrap_listen})`;
    if (file.agent_subnet === undefined) {
      problems.add(
        "agent_subnet",
        `agent_subnet: required ${why}: the guests' subnet cannot be derived from it`,
      );
    }
    if (file.controller_url === undefined) {
      problems.add(
        "controller_url",
        `controller_url: required ${why}: guests need an address they can reach`,
      );
    }
  }
  if (isWildcardHost(artifact.host) && file.artifact_upload_url === undefined) {
    problems.add(
      "artifact_upload_url",
      `artifact_upload_url: required when artifact_listen binds every interface (${file.artifact_listen}): guests need an address they can reach`,
    );
  }
  let agentSubnet = file.agent_subnet ?? deriveAgentSubnet(bootstrap.host);
  if (agentSubnet === undefined) {
    if (!isWildcardHost(bootstrap.host)) {
      problems.add(
        "agent_subnet",
        `agent_subnet: required when bootstrap_listen's host is a name (${bootstrap.host}): only an IP address gives a subnet to derive`,
      );
    }
    agentSubnet = "";
  }

  const metricsListen = file.metrics_listen ?? "";
  const metrics = parseHostPort(metricsListen);
  if (metrics && !isLoopbackHost(metrics.host) && !file.metrics_allow_remote) {
    problems.add(
      "metrics_listen",
      `metrics_listen must be localhost-only (127.0.0.1, ::1 or localhost), got ${describeValue(metricsListen)}; ` +
        "metrics carry no authentication: to serve them to other hosts anyway, also set metrics_allow_remote: true",
    );
  }

  const token = file.proxmox_api_token?.trim() ?? "";
  if (file.proxmox_backend === "api" && token === "") {
    problems.add(
      "proxmox_api_token",
      `proxmox_api_token: required when proxmox_backend is "api" (format USER@REALM!TOKENID=SECRET)`,
    );
  }
  if (file.proxmox_tls_insecure && file.proxmox_tls_ca_path !== undefined) {
    problems.add(
      "proxmox_tls_insecure",
      "proxmox_tls_insecure: cannot be true while proxmox_tls_ca_path is set; trust the CA or skip verification, not both",
    );
  }

  const idleStopIntervalMs = file.idle_stop_interval ?? MINUTE_MS;
  if (file.idle_stop_enabled && idleStopIntervalMs <= 0) {
    problems.add(
      "idle_stop_interval",
      "idle_stop_interval: must be greater than 0 when idle_stop_enabled is true",
    );
  }

  const commandTimeoutMs = file.proxmox_command_timeout ?? 2 * MINUTE_MS;
  // A full clone of a large disk takes minutes (7 min for 60 GiB was observed); the default leaves room.
  const taskTimeoutMs = file.proxmox_task_timeout ?? 30 * MINUTE_MS;
  if (taskTimeoutMs <= 0) {
    problems.add(
      "proxmox_task_timeout",
      "proxmox_task_timeout: must be greater than 0: a Proxmox task needs time to run, e.g. 30m",
    );
  } else if (taskTimeoutMs < commandTimeoutMs) {
    problems.add(
      "proxmox_task_timeout",
      `proxmox_task_timeout: must be at least proxmox_command_timeout (${formatDuration(commandTimeoutMs)}): a task cannot be given less time than the call that starts it; raise proxmox_task_timeout or lower proxmox_command_timeout`,
    );
  }
  const provisioningTimeoutMs = file.provisioning_timeout ?? 10 * MINUTE_MS;
  // A lease that expires as it is taken would let a second operation in while the first still runs.
  const workspaceLeaseTtlMs = file.workspace_lease_ttl ?? 30 * MINUTE_MS;
  if (workspaceLeaseTtlMs <= 0) {
    problems.add(
      "workspace_lease_ttl",
      "workspace_lease_ttl: must be greater than 0: a workspace lease needs time to be renewed",
    );
  }
  const sshKeyPath = optionalPath(file.ssh_public_key_path);
  const control = resolveControl(file, absolute, problems);

  return {
    profiles_dir: absolute(file.profiles_dir),
    data_dir: dataDir,
    run_dir: runDir,
    socket_path:
      file.socket_path === undefined ? path.join(runDir, "agentlabd.sock") : absolute(file.socket_path),
    db_path: file.db_path === undefined ? path.join(dataDir, "agentlab.db") : absolute(file.db_path),
    artifact_dir:
      file.artifact_dir === undefined ? path.join(dataDir, "artifacts") : absolute(file.artifact_dir),
    log_level: file.log_level,
    bootstrap_listen: file.bootstrap_listen.trim(),
    artifact_listen: file.artifact_listen.trim(),
    agent_subnet: agentSubnet.trim(),
    controller_url: file.controller_url?.trim() ?? `http://${file.bootstrap_listen.trim()}`,
    artifact_upload_url: file.artifact_upload_url?.trim() ?? `http://${file.artifact_listen.trim()}/upload`,
    metrics_listen: metricsListen.trim(),
    metrics_allow_remote: file.metrics_allow_remote,
    snippets_dir: absolute(file.snippets_dir),
    snippet_storage: file.snippet_storage,
    ssh_public_key: resolveSshKey(file.ssh_public_key, sshKeyPath, source, problems, warnings),
    ssh_public_key_path: sshKeyPath,
    proxmox_backend: file.proxmox_backend,
    proxmox_clone_mode: file.proxmox_clone_mode,
    network_isolation: file.network_isolation,
    proxmox_api_url: file.proxmox_api_url.trim(),
    proxmox_api_token: lowerSecret(
      token.startsWith(API_TOKEN_PREFIX) ? token.slice(API_TOKEN_PREFIX.length) : token,
    ),
    proxmox_node: file.proxmox_node ?? "",
    proxmox_tls_insecure: file.proxmox_tls_insecure,
    proxmox_tls_ca_path: optionalPath(file.proxmox_tls_ca_path),
    proxmox_command_timeout_ms: commandTimeoutMs,
    proxmox_task_timeout_ms: taskTimeoutMs,
    proxmox_max_reads: file.proxmox_max_reads,
    proxmox_max_writes: file.proxmox_max_writes,
    host_max_tools: file.host_max_tools,
    proxmox_cluster_list_ttl_ms: file.proxmox_cluster_list_ttl ?? 0,
    provisioning_timeout_ms: provisioningTimeoutMs,
    warm_pool_concurrency: file.warm_pool_concurrency,
    phone_home_grace_ms: file.phone_home_grace ?? 3 * MINUTE_MS,
    // Orphans are VMs whose provisioning never finished; give a slow provisioning time to end first.
    orphan_grace_period_ms:
      file.orphan_grace_period ??
      Math.min(Math.max(2 * provisioningTimeoutMs, 5 * MINUTE_MS), 120 * MINUTE_MS),
    idle_stop_enabled: file.idle_stop_enabled,
    idle_stop_interval_ms: idleStopIntervalMs,
    idle_stop_minutes_default: file.idle_stop_minutes_default,
    idle_stop_cpu_threshold: file.idle_stop_cpu_threshold,
    artifact_max_bytes: file.artifact_max_bytes,
    artifact_max_files: file.artifact_max_files,
    artifact_token_ttl_minutes: file.artifact_token_ttl_minutes,
    bootstrap_rate_limit_qps: file.bootstrap_rate_limit_qps,
    bootstrap_rate_limit_burst: file.bootstrap_rate_limit_burst,
    shutdown_timeout_ms: file.shutdown_timeout ?? 10_000,
    rpc_max_connections: file.rpc_max_connections,
    rpc_max_connections_per_client: file.rpc_max_connections_per_client,
    rpc_idle_timeout_ms: file.rpc_idle_timeout ?? 10 * MINUTE_MS,
    rpc_max_unsent_bytes: file.rpc_max_unsent_bytes,
    workspace_storage: file.workspace_storage,
    workspace_lease_ttl_ms: workspaceLeaseTtlMs,
    host_tools: file.host_tools,
    artifact_retention_days: file.artifact_retention_days,
    event_retention_days: file.event_retention_days,
    ...control,
  };
}

/**
 * The remote control listener's keys. A listener on every interface with no allowlist would offer the
 * token endpoint to the whole network: refused, with the reason (upstream required CIDRs there too).
 */
function resolveControl(
  file: ConfigFile,
  absolute: (value: string) => string,
  problems: Problems,
): Pick<Config, "control_listen" | "control_tls_cert" | "control_tls_key" | "control_allow_cidrs"> {
  const listenAddress =
    file.control_listen === undefined ? "" : (controlListenAddress(file.control_listen) ?? "");
  const cidrs = (file.control_allow_cidrs ?? []).map((cidr) => cidr.trim());
  const bad = cidrs.filter((cidr) => !isCidr(cidr));
  if (bad.length > 0) {
    problems.add(
      "control_allow_cidrs",
      `control_allow_cidrs: ${bad.map((cidr) => JSON.stringify(cidr)).join(", ")} ${bad.length === 1 ? "is not a CIDR" : "are not CIDRs"}; expected e.g. 100.64.0.0/10 or 192.168.1.20/32`,
    );
  }
  const hostPort = parseHostPort(listenAddress);
  if (hostPort && isWildcardHost(hostPort.host) && cidrs.length === 0) {
    problems.add(
      "control_allow_cidrs",
      `control_allow_cidrs: required when control_listen binds every interface (${listenAddress}): list the client networks allowed to reach the control listener (e.g. [100.64.0.0/10] for a tailnet), or bind control_listen to one address`,
    );
  }
  if ((file.control_tls_cert === undefined) !== (file.control_tls_key === undefined)) {
    const missing = file.control_tls_cert === undefined ? "control_tls_cert" : "control_tls_key";
    problems.add(
      missing,
      `${missing}: required with ${missing === "control_tls_cert" ? "control_tls_key" : "control_tls_cert"}: give both PEM files, or neither for a self-signed certificate`,
    );
  }
  return {
    control_listen: listenAddress,
    control_tls_cert: file.control_tls_cert === undefined ? "" : absolute(file.control_tls_cert),
    control_tls_key: file.control_tls_key === undefined ? "" : absolute(file.control_tls_key),
    control_allow_cidrs: cidrs,
  };
}

/**
 * The key file is read now rather than at first provisioning: upstream read it lazily too, and a missing
 * key then failed every `sandbox new` with a message far from its cause.
 */
function resolveSshKey(
  inline: string | undefined,
  keyPath: string,
  source: string,
  problems: Problems,
  warnings: string[],
): string {
  let fromFile: string | undefined;
  if (keyPath !== "") {
    try {
      fromFile = fs.readFileSync(keyPath, "utf8").trim();
    } catch (error) {
      problems.add("ssh_public_key_path", `ssh_public_key_path: cannot read ${keyPath}: ${errorText(error)}`);
    }
    if (fromFile === "") problems.add("ssh_public_key_path", `ssh_public_key_path: ${keyPath} is empty`);
    else if (fromFile?.includes("\n")) {
      problems.add(
        "ssh_public_key_path",
        `ssh_public_key_path: ${keyPath} holds more than one line; expected a single SSH public key`,
      );
    }
  }
  if (inline !== undefined) {
    if (keyPath !== "") {
      warnings.push(`${source}: ssh_public_key and ssh_public_key_path are both set; using ssh_public_key`);
    }
    return inline.trim();
  }
  return fromFile ?? "";
}

/**
 * Refuse a config others could read (it may hold the API token) or change (it decides what runs as root),
 * by its mode or by owning it.
 */
function checkConfigFile(source: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new AgentlabError("CONFIG_INVALID", `config file ${source} not found`, {
        details: { file: source },
        hint: "create it (every key has a default, so an empty file works): install -m 0600 /dev/null /etc/agentlab/config.yaml; or point AGENTLAB_CONFIG or --config at an existing file",
        cause: error,
      });
    }
    throw new AgentlabError("CONFIG_INVALID", `config file ${source} cannot be read: ${errorText(error)}`, {
      details: { file: source },
      cause: error,
    });
  }
  if (!stat.isFile()) {
    throw new AgentlabError("CONFIG_INVALID", `config file ${source} is not a regular file`, {
      details: { file: source },
      hint: "point AGENTLAB_CONFIG at the config.yaml file itself",
    });
  }
  // Mode alone is not enough: whoever owns the file can chmod it and rewrite what agentlabd runs as root.
  const euid = process.geteuid?.();
  if (euid !== undefined && stat.uid !== 0 && stat.uid !== euid) {
    throw new AgentlabError(
      "CONFIG_INVALID",
      `${source} is owned by uid ${stat.uid}, not by root or the user agentlabd runs as (uid ${euid}): its owner could change what agentlabd does`,
      { details: { file: source, uid: stat.uid }, hint: `chown root:root ${source}` },
    );
  }
  const mode = stat.mode & 0o777;
  const unsafe: string[] = [];
  if (mode & 0o007) unsafe.push("other users can access it");
  if (mode & 0o030) unsafe.push("its group can modify or execute it");
  if (unsafe.length > 0) {
    throw new AgentlabError(
      "CONFIG_INVALID",
      `${source}: permissions ${mode.toString(8).padStart(4, "0")} are too open: ${unsafe.join(" and ")}`,
      { details: { file: source, mode }, hint: `chmod 600 ${source}` },
    );
  }
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value.trim());
    return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "";
  } catch {
    return false;
  }
}

function errorText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "it is a directory";
  return error instanceof Error ? error.message : String(error);
}
