import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { type Config, configPathFromEnv, DEFAULT_CONFIG_PATH, loadConfig } from "../../src/config/config.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-config-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));

let counter = 0;
/** A fresh directory holding config.yaml with `text`; returns the file's path. */
function writeConfig(text: string, mode = 0o600): string {
  const dir = path.join(root, `case-${++counter}`);
  fs.mkdirSync(dir);
  const file = path.join(dir, "config.yaml");
  fs.writeFileSync(file, text);
  fs.chmodSync(file, mode);
  return file;
}

function load(text: string): { config: Config; warnings: string[]; file: string } {
  const file = writeConfig(text);
  return { ...loadConfig(file), file };
}

function loadError(text: string, mode = 0o600): { error: AgentlabError; file: string } {
  const file = writeConfig(text, mode);
  return { error: thrown(() => loadConfig(file)), file };
}

function thrown(fn: () => unknown): AgentlabError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof AgentlabError, `expected an AgentlabError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected an error");
}

describe("config: defaults and derived values", () => {
  it("an empty file gives upstream's defaults, fully resolved", () => {
    const { config, warnings } = load("");
    assert.deepEqual(warnings, []);
    assert.deepEqual(config, {
      profiles_dir: "/etc/agentlab/profiles",
      data_dir: "/var/lib/agentlab",
      run_dir: "/run/agentlab",
      socket_path: "/run/agentlab/agentlabd.sock",
      db_path: "/var/lib/agentlab/agentlab.db",
      artifact_dir: "/var/lib/agentlab/artifacts",
      log_level: "info",
      bootstrap_listen: "10.77.0.1:8844",
      artifact_listen: "10.77.0.1:8846",
      agent_subnet: "10.77.0.0/16",
      controller_url: "http://10.77.0.1:8844",
      artifact_upload_url: "http://10.77.0.1:8846/upload",
      metrics_listen: "",
      metrics_allow_remote: false,
      snippets_dir: "/var/lib/vz/snippets",
      snippet_storage: "local",
      ssh_public_key: "",
      ssh_public_key_path: "",
      proxmox_backend: "shell",
      proxmox_clone_mode: "linked",
      network_isolation: "auto",
      proxmox_api_url: "https://localhost:8006",
      proxmox_api_token: "",
      proxmox_node: "",
      proxmox_tls_insecure: false,
      proxmox_tls_ca_path: "",
      proxmox_command_timeout_ms: 120_000,
      proxmox_task_timeout_ms: 1_800_000,
      proxmox_max_reads: 8,
      proxmox_max_writes: 16,
      host_max_tools: 4,
      proxmox_cluster_list_ttl_ms: 0,
      provisioning_timeout_ms: 600_000,
      warm_pool_concurrency: 1,
      phone_home_grace_ms: 180_000,
      orphan_grace_period_ms: 1_200_000,
      idle_stop_enabled: true,
      idle_stop_interval_ms: 60_000,
      idle_stop_minutes_default: 30,
      idle_stop_cpu_threshold: 0.05,
      artifact_max_bytes: 268_435_456,
      artifact_max_files: 1000,
      artifact_token_ttl_minutes: 1440,
      bootstrap_rate_limit_qps: 1,
      bootstrap_rate_limit_burst: 3,
      shutdown_timeout_ms: 10_000,
      rpc_max_connections: 256,
      rpc_max_connections_per_client: 64,
      rpc_idle_timeout_ms: 600_000,
      rpc_max_unsent_bytes: 16_777_216,
      workspace_storage: "local-zfs",
      workspace_lease_ttl_ms: 1_800_000,
      host_tools: "auto",
      artifact_retention_days: 30,
      event_retention_days: 90,
      control_listen: "",
      control_tls_cert: "",
      control_tls_key: "",
      control_allow_cidrs: [],
    } satisfies Config);
  });

  it("a comment-only file is the same as an empty one", () => {
    assert.equal(load("# nothing set yet\n").config.log_level, "info");
  });

  it("derives db_path, artifact_dir and socket_path from data_dir and run_dir", () => {
    const { config } = load("data_dir: /srv/agentlab\nrun_dir: /srv/run\n");
    assert.equal(config.db_path, "/srv/agentlab/agentlab.db");
    assert.equal(config.artifact_dir, "/srv/agentlab/artifacts");
    assert.equal(config.socket_path, "/srv/run/agentlabd.sock");
  });

  it("explicit paths win over derived ones", () => {
    const { config } = load(
      "data_dir: /srv/a\ndb_path: /db/x.db\nartifact_dir: /art\nsocket_path: /s/d.sock\n",
    );
    assert.equal(config.db_path, "/db/x.db");
    assert.equal(config.artifact_dir, "/art");
    assert.equal(config.socket_path, "/s/d.sock");
  });

  it("resolves relative paths against the config file's directory", () => {
    const file = writeConfig(
      [
        "profiles_dir: profiles",
        "data_dir: data",
        "run_dir: ./run",
        "snippets_dir: ../snippets",
        "proxmox_tls_ca_path: certs/ca.pem",
      ].join("\n"),
    );
    const dir = path.dirname(file);
    const { config } = loadConfig(file);
    assert.equal(config.profiles_dir, path.join(dir, "profiles"));
    assert.equal(config.data_dir, path.join(dir, "data"));
    assert.equal(config.db_path, path.join(dir, "data", "agentlab.db"));
    assert.equal(config.artifact_dir, path.join(dir, "data", "artifacts"));
    assert.equal(config.socket_path, path.join(dir, "run", "agentlabd.sock"));
    assert.equal(config.snippets_dir, path.join(root, "snippets"));
    assert.equal(config.proxmox_tls_ca_path, path.join(dir, "certs", "ca.pem"));
  });

  it("an empty value keeps the default (upstream semantics)", () => {
    const { config, warnings } = load('log_level: ""\nprofiles_dir:\nproxmox_node: ""\nidle_stop_enabled:\n');
    assert.deepEqual(warnings, []);
    assert.equal(config.log_level, "info");
    assert.equal(config.profiles_dir, "/etc/agentlab/profiles");
    assert.equal(config.proxmox_node, "");
    assert.equal(config.idle_stop_enabled, true);
  });

  it("derives the agent subnet (/16) and the guest URLs from the listen addresses", () => {
    const { config } = load("bootstrap_listen: 192.168.5.1:9000\nartifact_listen: 192.168.5.1:9001\n");
    assert.equal(config.agent_subnet, "192.168.0.0/16");
    assert.equal(config.controller_url, "http://192.168.5.1:9000");
    assert.equal(config.artifact_upload_url, "http://192.168.5.1:9001/upload");
  });

  it("derives a /64 from an IPv6 bootstrap address", () => {
    const { config } = load("bootstrap_listen: '[fd00:77::1]:8844'\n");
    assert.equal(config.agent_subnet, "fd00:77::/64");
    assert.equal(config.controller_url, "http://[fd00:77::1]:8844");
  });

  it("parses Go durations into milliseconds under *_ms keys", () => {
    const { config } = load(
      "proxmox_command_timeout: 90s\nprovisioning_timeout: 20m\nidle_stop_interval: 1m30s\nshutdown_timeout: 250ms\n",
    );
    assert.equal(config.proxmox_command_timeout_ms, 90_000);
    assert.equal(config.provisioning_timeout_ms, 1_200_000);
    assert.equal(config.orphan_grace_period_ms, 2_400_000, "orphan grace defaults to 2 x provisioning");
    assert.equal(config.idle_stop_interval_ms, 90_000);
    assert.equal(config.shutdown_timeout_ms, 250);
  });

  it("a task may run for proxmox_task_timeout, separately from the per-call proxmox_command_timeout", () => {
    const { config } = load("proxmox_command_timeout: 30s\nproxmox_task_timeout: 1h30m\n");
    assert.equal(config.proxmox_command_timeout_ms, 30_000);
    assert.equal(config.proxmox_task_timeout_ms, 5_400_000);
    assert.equal(load("proxmox_command_timeout: 5m\n").config.proxmox_task_timeout_ms, 1_800_000);
  });

  it("the Proxmox call pool's limits and the cluster list's reuse are configurable; a limit of 0 is refused", () => {
    const { config } = load("proxmox_max_reads: 2\nproxmox_max_writes: 3\nproxmox_cluster_list_ttl: 0s\n");
    assert.equal(config.proxmox_max_reads, 2);
    assert.equal(config.proxmox_max_writes, 3);
    assert.equal(config.proxmox_cluster_list_ttl_ms, 0);
    const { error } = loadError("proxmox_max_reads: 0\n");
    assert.equal(error.details["key"], "proxmox_max_reads");
    assert.match(error.message, /proxmox_max_reads/);
  });

  it("clamps the derived orphan grace period to [5m, 2h], and an explicit one wins", () => {
    assert.equal(load("provisioning_timeout: 1m\n").config.orphan_grace_period_ms, 300_000);
    assert.equal(load("provisioning_timeout: 0\n").config.orphan_grace_period_ms, 300_000);
    assert.equal(load("provisioning_timeout: 3h\n").config.orphan_grace_period_ms, 7_200_000);
    assert.equal(
      load("provisioning_timeout: 3h\norphan_grace_period: 1m\n").config.orphan_grace_period_ms,
      60_000,
    );
  });

  it("reads the workspace settings", () => {
    const { config, warnings } = load(
      "workspace_storage: local-lvm\nworkspace_lease_ttl: 5s\nhost_tools: off\n",
    );
    assert.deepEqual(warnings, []);
    assert.equal(config.workspace_storage, "local-lvm");
    assert.equal(config.workspace_lease_ttl_ms, 5_000);
    assert.equal(config.host_tools, "off");
    assert.equal(load("host_tools: on\n").config.host_tools, "on");
  });

  it("accepts the YAML 1.1 boolean words upstream configs may use", () => {
    assert.equal(load("idle_stop_enabled: no\n").config.idle_stop_enabled, false);
    assert.equal(load("proxmox_tls_insecure: yes\n").config.proxmox_tls_insecure, true);
  });

  it("reads ssh_public_key_path at load", () => {
    const file = writeConfig("ssh_public_key_path: id.pub\n");
    fs.writeFileSync(path.join(path.dirname(file), "id.pub"), "ssh-ed25519 AAAAC3Nza agentlab\n");
    const { config } = loadConfig(file);
    assert.equal(config.ssh_public_key, "ssh-ed25519 AAAAC3Nza agentlab");
    assert.equal(config.ssh_public_key_path, path.join(path.dirname(file), "id.pub"));
  });
});

describe("config: validation of single keys", () => {
  it("names the file, the key, what is expected and what was found", () => {
    const { error, file } = loadError("proxmox_backend: docker\n");
    assert.equal(error.code, "CONFIG_INVALID");
    assert.equal(error.message, `${file}: proxmox_backend: expected "shell" or "api", got "docker"`);
    assert.equal(error.details["file"], file);
    assert.equal(error.details["key"], "proxmox_backend");
  });

  const cases: [yaml: string, key: string, expected: RegExp][] = [
    ["proxmox_clone_mode: copy", "proxmox_clone_mode", /expected "linked" or "full", got "copy"/],
    ["log_level: verbose", "log_level", /expected "trace", "debug", "info", "warn" or "error"/],
    ["bootstrap_listen: 8844", "bootstrap_listen", /expected host:port/],
    ["artifact_listen: 10.77.0.1:99999", "artifact_listen", /expected host:port/],
    ["agent_subnet: 10.77.0.0", "agent_subnet", /expected a CIDR/],
    ["controller_url: ftp://example.com", "controller_url", /expected an http:\/\/ or https:\/\/ URL/],
    ["artifact_upload_url: example.com/upload", "artifact_upload_url", /URL/],
    ["proxmox_api_url: localhost:8006", "proxmox_api_url", /URL/],
    ["snippet_storage: 'my storage'", "snippet_storage", /storage name/],
    [`snippet_storage: ${"s".repeat(65)}`, "snippet_storage", /at most 64/],
    ["proxmox_node: 'node one'", "proxmox_node", /node name/],
    ["proxmox_tls_insecure: maybe", "proxmox_tls_insecure", /expected true or false, got "maybe"/],
    ["idle_stop_enabled: 3", "idle_stop_enabled", /expected true or false, got 3/],
    ["idle_stop_minutes_default: -1", "idle_stop_minutes_default", /expected an integer >= 0, got -1/],
    ["idle_stop_cpu_threshold: 1.5", "idle_stop_cpu_threshold", /expected a number from 0 to 1, got 1.5/],
    ["artifact_max_bytes: 0", "artifact_max_bytes", /expected a positive integer, got 0/],
    ["artifact_token_ttl_minutes: 1.5", "artifact_token_ttl_minutes", /expected a positive integer/],
    [
      "proxmox_command_timeout: 5",
      "proxmox_command_timeout",
      /expected a duration such as 30s, 5m or 1h30m, got 5/,
    ],
    [
      "proxmox_task_timeout: 30",
      "proxmox_task_timeout",
      /expected a duration such as 30s, 5m or 1h30m, got 30/,
    ],
    ["proxmox_task_timeout: 0", "proxmox_task_timeout", /must be greater than 0/],
    [
      "proxmox_task_timeout: 1m",
      "proxmox_task_timeout",
      /must be at least proxmox_command_timeout \(2m\).*raise proxmox_task_timeout or lower proxmox_command_timeout/,
    ],
    ["provisioning_timeout: soon", "provisioning_timeout", /expected a duration/],
    ["orphan_grace_period: -5m", "orphan_grace_period", /expected a duration/],
    ["shutdown_timeout: [1]", "shutdown_timeout", /expected a duration.*got a list/],
    ["data_dir: {a: 1}", "data_dir", /expected a path, got a mapping/],
    ['ssh_public_key: "ssh-ed25519 A\\nssh-ed25519 B"', "ssh_public_key", /one line/],
    ["workspace_storage: 'local zfs'", "workspace_storage", /expected a Proxmox storage name/],
    [
      "workspace_lease_ttl: 30",
      "workspace_lease_ttl",
      /expected a duration such as 30s, 5m or 1h30m, got 30/,
    ],
    ["host_tools: maybe", "host_tools", /expected "auto", "on" or "off", got "maybe"/],
  ];
  for (const [yaml, key, expected] of cases) {
    it(`${key}: ${yaml.slice(0, 50)}`, () => {
      const { error, file } = loadError(`${yaml}\n`);
      assert.equal(error.code, "CONFIG_INVALID");
      assert.equal(error.details["key"], key);
      assert.ok(error.message.startsWith(`${file}: ${key}: `), error.message);
      assert.match(error.message, expected);
      assert.equal(error.message.split("\n").length, 1);
    });
  }

  it("metrics_listen must be localhost-only", () => {
    const { error } = loadError("metrics_listen: 0.0.0.0:8847\n");
    assert.equal(error.details["key"], "metrics_listen");
    assert.match(error.message, /metrics_listen must be localhost-only/);
    for (const ok of ["127.0.0.1:8847", "localhost:9090", "'[::1]:8847'"]) {
      assert.equal(load(`metrics_listen: ${ok}\n`).config.metrics_listen, ok.replaceAll("'", ""));
    }
  });

  it("metrics_allow_remote lets metrics_listen bind another host, and only when set", () => {
    const { error } = loadError("metrics_listen: 0.0.0.0:8847\nmetrics_allow_remote: false\n");
    assert.match(error.message, /set metrics_allow_remote: true/);
    const { config } = load("metrics_listen: 0.0.0.0:8847\nmetrics_allow_remote: true\n");
    assert.equal(config.metrics_listen, "0.0.0.0:8847");
    assert.equal(config.metrics_allow_remote, true);
    assert.equal(load("").config.metrics_allow_remote, false);
  });

  it("idle_stop_interval must be > 0 while idle stop is enabled", () => {
    const { error } = loadError("idle_stop_interval: 0s\n");
    assert.equal(error.details["key"], "idle_stop_interval");
    assert.match(error.message, /idle_stop_interval: must be greater than 0 when idle_stop_enabled is true/);
    assert.equal(load("idle_stop_enabled: false\nidle_stop_interval: 0s\n").config.idle_stop_interval_ms, 0);
  });

  it("workspace_lease_ttl must be > 0", () => {
    const { error, file } = loadError("workspace_lease_ttl: 0s\n");
    assert.equal(error.details["key"], "workspace_lease_ttl");
    assert.equal(
      error.message,
      `${file}: workspace_lease_ttl: must be greater than 0: a workspace lease needs time to be renewed`,
    );
  });

  it("a wildcard bootstrap_listen needs agent_subnet and controller_url", () => {
    const { error } = loadError("bootstrap_listen: 0.0.0.0:8844\n");
    const keys = (error.details["problems"] as { key: string }[]).map((problem) => problem.key);
    assert.deepEqual(keys.sort(), ["agent_subnet", "controller_url"]);
    const { config } = load(
      "bootstrap_listen: 0.0.0.0:8844\nagent_subnet: 10.9.0.0/16\ncontroller_url: https://lab.example:8844\n",
    );
    assert.equal(config.agent_subnet, "10.9.0.0/16");
    assert.equal(config.controller_url, "https://lab.example:8844");
  });

  it("a wildcard artifact_listen needs artifact_upload_url", () => {
    const { error } = loadError("artifact_listen: ':8846'\n");
    assert.equal(error.details["key"], "artifact_upload_url");
  });

  it("a host name in bootstrap_listen needs an explicit agent_subnet", () => {
    const { error } = loadError("bootstrap_listen: lab.example:8844\n");
    assert.equal(error.details["key"], "agent_subnet");
    assert.equal(
      load("bootstrap_listen: lab.example:8844\nagent_subnet: 10.77.0.0/16\n").config.agent_subnet,
      "10.77.0.0/16",
    );
  });

  it("an unreadable or empty ssh_public_key_path is an error naming the key and the path", () => {
    const missing = loadError("ssh_public_key_path: nope.pub\n");
    const missingPath = path.join(path.dirname(missing.file), "nope.pub");
    assert.equal(missing.error.details["key"], "ssh_public_key_path");
    assert.match(missing.error.message, /ssh_public_key_path: cannot read /);
    assert.ok(missing.error.message.includes(missingPath), missing.error.message);

    const file = writeConfig("ssh_public_key_path: empty.pub\n");
    const emptyPath = path.join(path.dirname(file), "empty.pub");
    fs.writeFileSync(emptyPath, "\n");
    const empty = thrown(() => loadConfig(file));
    assert.equal(empty.details["key"], "ssh_public_key_path");
    assert.equal(empty.message, `${file}: ssh_public_key_path: ${emptyPath} is empty`);
  });
});

describe("config: Proxmox backend settings", () => {
  it("the api backend needs a token", () => {
    const { error, file } = loadError("proxmox_backend: api\n");
    assert.equal(error.code, "CONFIG_INVALID");
    assert.equal(error.details["key"], "proxmox_api_token");
    assert.ok(error.message.startsWith(`${file}: proxmox_api_token: required when proxmox_backend is "api"`));
  });

  it("accepts USER@REALM!TOKENID=SECRET, with or without the PVEAPIToken= prefix", () => {
    const token = "agentlab@pve!daemon=0b6f8a52-8c1e-4c1b-9d2a-3f0e4b5a6c7d";
    const plain = load(`proxmox_backend: api\nproxmox_api_token: "${token}"\n`).config;
    assert.equal(plain.proxmox_backend, "api");
    assert.equal(plain.proxmox_api_token, token);
    const prefixed = load(`proxmox_backend: api\nproxmox_api_token: "PVEAPIToken=${token}"\n`).config;
    assert.equal(prefixed.proxmox_api_token, token);
  });

  it("refuses a malformed token without echoing it", () => {
    const { error } = loadError("proxmox_backend: api\nproxmox_api_token: 'root@pam:s3cr3t-value'\n");
    assert.equal(error.details["key"], "proxmox_api_token");
    assert.match(error.message, /USER@REALM!TOKENID=SECRET/);
    assert.ok(!error.message.includes("s3cr3t"), error.message);
  });

  it("the secret must be the token's UUID; upper case is taken as lower case", () => {
    const { error } = loadError("proxmox_backend: api\nproxmox_api_token: 'root@pam!agentlab=not-a-uuid'\n");
    assert.equal(error.details["key"], "proxmox_api_token");
    assert.match(error.message, /SECRET is the UUID pveum printed/);
    const upper = load(
      "proxmox_backend: api\nproxmox_api_token: 'root@pam!agentlab=0B6F8A52-8C1E-4C1B-9D2A-3F0E4B5A6C7D'\n",
    ).config;
    assert.equal(upper.proxmox_api_token, "root@pam!agentlab=0b6f8a52-8c1e-4c1b-9d2a-3f0e4b5a6c7d");
  });

  it("proxmox_tls_insecure and proxmox_tls_ca_path are mutually exclusive", () => {
    const { error, file } = loadError(
      "proxmox_tls_insecure: true\nproxmox_tls_ca_path: /etc/pve/pve-root-ca.pem\n",
    );
    assert.equal(error.code, "CONFIG_INVALID");
    assert.equal(error.details["key"], "proxmox_tls_insecure");
    assert.ok(
      error.message.startsWith(
        `${file}: proxmox_tls_insecure: cannot be true while proxmox_tls_ca_path is set`,
      ),
    );
    assert.equal(load("proxmox_tls_insecure: true\n").config.proxmox_tls_insecure, true);
    assert.equal(load("proxmox_tls_ca_path: /ca.pem\n").config.proxmox_tls_ca_path, "/ca.pem");
  });
});

describe("config: several problems, unknown keys", () => {
  it("reports every problem at once, one line each, in file order", () => {
    const { error, file } = loadError(
      ["log_level: loud", "data_dir: /ok", "proxmox_backend: docker", "artifact_max_bytes: -1"].join("\n"),
    );
    assert.equal(error.code, "CONFIG_INVALID");
    const lines = error.message.split("\n");
    assert.equal(lines.length, 3);
    assert.ok(lines.every((line) => line.startsWith(`${file}: `)));
    assert.deepEqual(
      lines.map((line) => line.slice(file.length + 2).split(":")[0]),
      ["log_level", "proxmox_backend", "artifact_max_bytes"],
    );
    assert.equal(error.details["key"], "log_level");
    assert.equal((error.details["problems"] as unknown[]).length, 3);
  });

  it("still checks cross-key rules when another key is invalid", () => {
    const { error } = loadError("log_level: loud\nproxmox_backend: api\n");
    const keys = (error.details["problems"] as { key: string }[]).map((problem) => problem.key);
    assert.deepEqual(keys, ["log_level", "proxmox_api_token"]);
  });

  it("an unknown key is a warning with a did-you-mean, not an error", () => {
    const { config, warnings, file } = load("proxmox_bakend: api\nzzz_unrelated: 1\n");
    assert.equal(config.proxmox_backend, "shell");
    assert.deepEqual(warnings, [
      `${file}: proxmox_bakend: unknown key, ignored (did you mean "proxmox_backend"?)`,
      `${file}: zzz_unrelated: unknown key, ignored`,
    ]);
  });

  it("upstream-only keys are named as such", () => {
    const { warnings, file } = load("secrets_dir: /etc/agentlab/secrets\ncontrol_auth_token: s3cret\n");
    assert.deepEqual(warnings, [
      `${file}: secrets_dir: upstream agentlab setting that this daemon does not use, ignored`,
      `${file}: control_auth_token: upstream's single shared token is not used, ignored: create scoped tokens with agentlab token create (docs/remote.md)`,
    ]);
  });
});

describe("config: the remote control listener", () => {
  it("is off by default", () => {
    const { config } = load("");
    assert.equal(config.control_listen, "");
    assert.deepEqual(config.control_allow_cidrs, []);
  });

  it("takes host:port, or a host alone on port 8845", () => {
    assert.equal(load("control_listen: 100.64.0.10:9000\n").config.control_listen, "100.64.0.10:9000");
    assert.equal(load("control_listen: 100.64.0.10\n").config.control_listen, "100.64.0.10:8845");
    assert.equal(load('control_listen: "[fd7a::1]"\n').config.control_listen, "[fd7a::1]:8845");
  });

  it("refuses a wildcard bind without an allowlist, with the reason", () => {
    for (const listen of ["0.0.0.0:8845", ":8845", "'[::]:8845'"]) {
      const error = thrown(() => load(`control_listen: ${listen}\n`));
      assert.equal(error.code, "CONFIG_INVALID");
      assert.match(error.message, /control_allow_cidrs: required when control_listen binds every interface/);
    }
    const { config } = load("control_listen: 0.0.0.0:8845\ncontrol_allow_cidrs: [100.64.0.0/10]\n");
    assert.deepEqual(config.control_allow_cidrs, ["100.64.0.0/10"]);
  });

  it("refuses CIDRs that do not parse and a certificate without its key", () => {
    const error = thrown(() => load("control_allow_cidrs: [10.0.0.0/8, nonsense]\n"));
    assert.match(error.message, /control_allow_cidrs: "nonsense" is not a CIDR/);
    const half = thrown(() => load("control_listen: 127.0.0.1\ncontrol_tls_cert: /etc/cert.pem\n"));
    assert.match(half.message, /control_tls_key: required with control_tls_cert/);
  });
});

describe("config: the file itself", () => {
  it("a missing file says so and how to fix it", () => {
    const file = path.join(root, "absent", "config.yaml");
    const error = thrown(() => loadConfig(file));
    assert.equal(error.code, "CONFIG_INVALID");
    assert.equal(error.message, `config file ${file} not found`);
    assert.match(error.hint, /AGENTLAB_CONFIG/);
  });

  it("a directory is not a config file", () => {
    const dir = fs.mkdtempSync(path.join(root, "dir-"));
    const error = thrown(() => loadConfig(dir));
    assert.equal(error.code, "CONFIG_INVALID");
    assert.match(error.message, /is not a regular file/);
  });

  it("refuses a file other users can read or write, with a chmod hint", () => {
    for (const mode of [0o644, 0o604, 0o602, 0o601]) {
      const { error, file } = loadError("", mode);
      assert.equal(error.code, "CONFIG_INVALID", mode.toString(8));
      assert.ok(error.message.startsWith(`${file}: permissions `), error.message);
      assert.equal(error.hint, `chmod 600 ${file}`);
    }
  });

  it("refuses a group-writable file but accepts a group-readable one", () => {
    const { error, file } = loadError("", 0o620);
    assert.equal(error.code, "CONFIG_INVALID");
    assert.equal(error.hint, `chmod 600 ${file}`);
    assert.equal(loadConfig(writeConfig("", 0o640)).config.log_level, "info");
  });

  it("refuses a file owned by another user, even with mode 0600 (issue 16 item 9)", (t) => {
    if (process.geteuid?.() !== 0) return t.skip("chown needs root");
    const file = writeConfig("", 0o600);
    fs.chownSync(file, 4242, 0);
    const error = thrown(() => loadConfig(file));
    assert.equal(error.code, "CONFIG_INVALID");
    assert.match(error.message, /is owned by uid 4242, not by root or the user agentlabd runs as \(uid 0\)/);
    assert.equal(error.hint, `chown root:root ${file}`);
    fs.chownSync(file, 0, 0);
    assert.equal(loadConfig(file).config.log_level, "info");
  });

  it("a YAML syntax error names the file and the line", () => {
    const { error, file } = loadError("log_level: info\ndata_dir: /x\nlog_level: debug\n");
    assert.equal(error.code, "CONFIG_INVALID");
    assert.ok(error.message.startsWith(`${file}: YAML syntax error at line 3`), error.message);
    assert.equal(error.details["line"], 3);

    const indent = loadError("log_level: info\n  data_dir: /x\n");
    assert.ok(
      indent.error.message.startsWith(`${indent.file}: YAML syntax error at line 2`),
      indent.error.message,
    );
  });

  it("a second YAML document is an error", () => {
    const { error } = loadError("log_level: info\n---\nlog_level: debug\n");
    assert.equal(error.code, "CONFIG_INVALID");
    assert.match(error.message, /expected a single document/);
    assert.equal(
      load("---\nlog_level: debug\n---\n").config.log_level,
      "debug",
      "empty documents do not count",
    );
  });

  it("the top level must be a mapping", () => {
    for (const text of ["- a\n- b\n", "just words\n", "42\n"]) {
      const { error, file } = loadError(text);
      assert.equal(error.code, "CONFIG_INVALID");
      assert.ok(error.message.startsWith(`${file}: expected a mapping of settings`), error.message);
    }
  });
});

describe("config: configPathFromEnv", () => {
  it("uses AGENTLAB_CONFIG when set, else the packaged path", () => {
    assert.equal(DEFAULT_CONFIG_PATH, "/etc/agentlab/config.yaml");
    assert.equal(configPathFromEnv({}), DEFAULT_CONFIG_PATH);
    assert.equal(configPathFromEnv({ AGENTLAB_CONFIG: "" }), DEFAULT_CONFIG_PATH);
    assert.equal(configPathFromEnv({ AGENTLAB_CONFIG: "/tmp/lab/config.yaml" }), "/tmp/lab/config.yaml");
  });
});
