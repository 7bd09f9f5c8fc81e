import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import {
  artifactRetentionMinutes,
  hostMountKeys,
  loadProfiles,
  type Profile,
  profileIdleStopMs,
} from "../../src/config/profiles.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import { PROFILES_DIR } from "../helpers/paths.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-profiles-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));

let counter = 0;
/** A fresh profiles directory holding `files` (name -> content); returns its path. */
function profilesDir(files: Record<string, string>): string {
  const dir = path.join(root, `case-${++counter}`);
  fs.mkdirSync(dir);
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
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

function loadOne(yaml: string): { profile: Profile; warnings: string[]; file: string } {
  const dir = profilesDir({ "p.yaml": yaml });
  const { profiles, warnings } = loadProfiles(dir);
  assert.equal(profiles.length, 1);
  return { profile: profiles[0]!, warnings, file: path.join(dir, "p.yaml") };
}

function loadError(yaml: string): { error: AgentlabError; file: string } {
  const dir = profilesDir({ "p.yaml": yaml });
  return { error: thrown(() => loadProfiles(dir)), file: path.join(dir, "p.yaml") };
}

const MINIMAL = "name: p\ntemplate_vmid: 9000\n";

describe("profiles: the shipped profiles/ directory", () => {
  it("loads the three default profiles with the spec's values and no warnings", () => {
    const { profiles, warnings } = loadProfiles(PROFILES_DIR);
    assert.deepEqual(warnings, []);
    const summary = profiles.map((p) => ({
      name: p.name,
      template: p.template_vmid,
      cores: p.resources.cores,
      memory: p.resources.memory_mb,
      root: p.storage.root_size_gb,
      bridge: p.network.bridge,
      model: p.network.model,
      mode: p.network.mode,
      keepalive: p.behavior.keepalive_default,
      ttl: p.behavior.ttl_minutes_default,
      behaviorMode: p.behavior.mode,
      secrets: p.secrets_bundle,
    }));
    const common = {
      template: 9000,
      bridge: "vmbr1",
      model: "virtio",
      mode: "nat",
      behaviorMode: "dangerous",
    };
    assert.deepEqual(summary, [
      {
        name: "interactive-dev",
        cores: 6,
        memory: 8192,
        root: 60,
        keepalive: true,
        ttl: 720,
        ...common,
        secrets: "default",
      },
      {
        name: "yolo-ephemeral",
        cores: 4,
        memory: 6144,
        root: 40,
        keepalive: false,
        ttl: 180,
        ...common,
        secrets: "default",
      },
      {
        name: "yolo-workspace",
        cores: 4,
        memory: 6144,
        root: 30,
        keepalive: true,
        ttl: 480,
        ...common,
        secrets: "default",
      },
    ]);
  });
});

describe("profiles: files and documents", () => {
  it("loads all three documents of a multi-document file (upstream loaded 2 of 3)", () => {
    const dir = profilesDir({
      "sizes.yaml": [
        "# sizes for quick experiments",
        "---",
        "name: tiny",
        "template_vmid: 9000",
        "---",
        "name: small",
        "template_vmid: 9000",
        "---",
        "name: medium",
        "template_vmid: 9001",
        "",
      ].join("\n"),
    });
    const { profiles, warnings } = loadProfiles(dir);
    assert.deepEqual(warnings, []);
    assert.deepEqual(
      profiles.map((p) => [p.name, p.source.document, p.template_vmid]),
      [
        ["tiny", 1, 9000],
        ["small", 2, 9000],
        ["medium", 3, 9001],
      ],
    );
    assert.ok(profiles.every((p) => p.source.file === path.join(dir, "sizes.yaml")));
  });

  it("reads *.yaml and *.yml sorted by file name, and nothing else", () => {
    const dir = profilesDir({
      "b.yml": "name: from-b\ntemplate_vmid: 1\n",
      "a.yaml": "name: from-a\ntemplate_vmid: 1\n",
      "c.yaml.bak": "name: backup\ntemplate_vmid: 1\n",
      "README.md": "# not a profile\n",
    });
    assert.deepEqual(
      loadProfiles(dir).profiles.map((p) => p.name),
      ["from-a", "from-b"],
    );
  });

  it("skips an empty document with a warning naming it", () => {
    const dir = profilesDir({ "p.yaml": "name: a\ntemplate_vmid: 1\n---\n---\nname: b\ntemplate_vmid: 1\n" });
    const { profiles, warnings } = loadProfiles(dir);
    assert.deepEqual(
      profiles.map((p) => [p.name, p.source.document]),
      [
        ["a", 1],
        ["b", 3],
      ],
    );
    assert.deepEqual(warnings, [`${path.join(dir, "p.yaml")} (document 2): empty document, skipped`]);
  });

  it("an empty directory loads no profiles, with a warning", () => {
    const dir = profilesDir({});
    const { profiles, warnings } = loadProfiles(dir);
    assert.deepEqual(profiles, []);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /no profiles found/);
  });

  it("a missing directory is PROFILE_INVALID naming it", () => {
    const dir = path.join(root, "no-such-dir");
    const error = thrown(() => loadProfiles(dir));
    assert.equal(error.code, "PROFILE_INVALID");
    assert.equal(error.message, `profiles directory ${dir} not found`);
    assert.equal(error.details["file"], dir);
  });

  it("keeps the raw document and fills section defaults", () => {
    const { profile } = loadOne(`${MINIMAL}future_feature: {x: 1}\n`);
    assert.deepEqual(profile.raw, { name: "p", template_vmid: 9000, future_feature: { x: 1 } });
    assert.equal(profile.type, "vm");
    assert.deepEqual(profile.network, { model: "virtio", mode: "nat" });
    assert.deepEqual(profile.resources, {});
    assert.deepEqual(profile.behavior, {
      keepalive_default: false,
      inner_sandbox: "off",
      inner_sandbox_args: [],
    });
  });
});

describe("profiles: validation", () => {
  it("names the file, the document, the profile and the key", () => {
    const dir = profilesDir({
      "a.yaml": `${MINIMAL}---\nname: x\ntemplate_vmid: 9000\nresources:\n  cores: four\n`,
    });
    const file = path.join(dir, "a.yaml");
    const error = thrown(() => loadProfiles(dir));
    assert.equal(error.code, "PROFILE_INVALID");
    assert.equal(
      error.message,
      `${file} (document 2, profile "x"): resources.cores: expected a positive integer, got "four"`,
    );
    assert.equal(error.details["file"], file);
    assert.equal(error.details["document"], 2);
    assert.equal(error.details["key"], "resources.cores");
    assert.equal(error.details["profile"], "x");
  });

  it("collects the problems of every file into one error, one line each", () => {
    const dir = profilesDir({
      "a.yaml": "name: a\ntemplate_vmid: 0\nnetwork:\n  mode: open\n",
      "b.yaml": "name: b\n",
      "c.yaml": "name: c\ntemplate_vmid: [\n",
    });
    const error = thrown(() => loadProfiles(dir));
    const lines = error.message.split("\n");
    assert.deepEqual(lines, [
      `${path.join(dir, "a.yaml")} (document 1, profile "a"): template_vmid: expected the template's VMID, a positive integer, got 0`,
      `${path.join(dir, "a.yaml")} (document 1, profile "a"): network.mode: expected "off", "nat" or "allowlist", got "open"`,
      `${path.join(dir, "b.yaml")} (document 1, profile "b"): template_vmid: required, expected the template's VMID, a positive integer`,
      `${path.join(dir, "c.yaml")}: YAML syntax error at line 3, column 1: unexpected end of the stream within a flow collection`,
    ]);
    assert.equal((error.details["problems"] as unknown[]).length, 4);
  });

  it("a duplicate name names both places", () => {
    const dir = profilesDir({
      "a.yaml": "name: dup\ntemplate_vmid: 1\n",
      "b.yaml": "name: other\ntemplate_vmid: 1\n---\nname: dup\ntemplate_vmid: 2\n",
    });
    const error = thrown(() => loadProfiles(dir));
    assert.equal(error.code, "PROFILE_INVALID");
    assert.equal(
      error.message,
      `${path.join(dir, "b.yaml")} (document 2, profile "dup"): name: duplicate profile name "dup", also defined in ${path.join(dir, "a.yaml")} (document 1)`,
    );
    assert.equal(error.details["key"], "name");
  });

  it('only type "vm" is supported', () => {
    for (const type of ["lxc", "docker"]) {
      const { error } = loadError(`${MINIMAL}type: ${type}\n`);
      assert.equal(error.code, "PROFILE_INVALID");
      assert.equal(error.details["key"], "type");
      assert.match(error.message, new RegExp(`: type: only "vm" is supported, got "${type}"$`));
    }
  });

  it("a missing name leaves the profile out of the location", () => {
    const { error, file } = loadError("template_vmid: 9000\n");
    assert.ok(error.message.startsWith(`${file} (document 1): name: required`), error.message);
  });

  it("a document that is not a mapping is an error", () => {
    const { error, file } = loadError("- name: p\n");
    assert.ok(
      error.message.startsWith(`${file} (document 1): expected a mapping of profile keys`),
      error.message,
    );
  });

  const cases: [yaml: string, key: string, expected: RegExp][] = [
    ["name: 'has space'\ntemplate_vmid: 1", "name", /expected a profile name/],
    [`${MINIMAL}network:\n  model: virtio-net`, "network.model", /expected "virtio", "e1000"/],
    [`${MINIMAL}network:\n  bridge: 'vmbr 1'`, "network.bridge", /expected a bridge name/],
    [`${MINIMAL}network:\n  firewall: maybe`, "network.firewall", /expected true or false/],
    [`${MINIMAL}network:\n  firewall_group: 'a group'`, "network.firewall_group", /firewall group name/],
    [
      `${MINIMAL}resources:\n  memory_mb: -512`,
      "resources.memory_mb",
      /expected a positive integer, got -512/,
    ],
    [`${MINIMAL}resources:\n  cpulist: 'two'`, "resources.cpulist", /expected a CPU list/],
    [`${MINIMAL}resources:\n  cpu_over_commit: 0`, "resources.cpu_over_commit", /expected a number > 0/],
    [
      `${MINIMAL}storage:\n  root_size_gb: 1.5`,
      "storage.root_size_gb",
      /expected a positive integer, got 1.5/,
    ],
    [`${MINIMAL}storage:\n  scsihw: ide`, "storage.scsihw", /expected "virtio-scsi-pci"/],
    [`${MINIMAL}behavior:\n  keepalive_default: 2`, "behavior.keepalive_default", /expected true or false/],
    [
      `${MINIMAL}behavior:\n  ttl_minutes_default: soon`,
      "behavior.ttl_minutes_default",
      /expected an integer/,
    ],
    [`${MINIMAL}behavior:\n  inner_sandbox: docker`, "behavior.inner_sandbox", /expected "bubblewrap"/],
    [`${MINIMAL}behavior:\n  inner_sandbox_args: --bind`, "behavior.inner_sandbox_args", /list of strings/],
    [`${MINIMAL}behavior:\n  inner_sandbox_args: [--ro, 3]`, "behavior.inner_sandbox_args[1]", /got 3/],
    [`${MINIMAL}artifacts:\n  retention_days: -1`, "artifacts.retention_days", /expected a number >= 0/],
    [`${MINIMAL}network: vmbr1`, "network", /expected a mapping of its keys \(bridge, .*got "vmbr1"/],
  ];
  for (const [yaml, key, expected] of cases) {
    it(`${key}: ${yaml.split("\n").at(-1)}`, () => {
      const { error } = loadError(`${yaml}\n`);
      assert.equal(error.code, "PROFILE_INVALID");
      assert.equal(error.details["key"], key);
      assert.ok(error.message.includes(`: ${key}: `), error.message);
      assert.match(error.message, expected);
    });
  }

  it("network.firewall: false conflicts with a mode or a firewall group", () => {
    const { error } = loadError(`${MINIMAL}network:\n  mode: nat\n  firewall: false\n`);
    assert.equal(error.details["key"], "network.firewall");
    assert.ok(
      error.message.endsWith(
        '(document 1, profile "p"): network.firewall: is false, but network.mode needs the firewall on; remove network.firewall or set it to true',
      ),
      error.message,
    );
  });

  it("network.firewall_group must be the mode's group when both are set", () => {
    const { error } = loadError(`${MINIMAL}network:\n  mode: nat\n  firewall_group: agent_nat_allowlist\n`);
    assert.equal(error.details["key"], "network.firewall_group");
    assert.match(
      error.message,
      /expected "agent_nat_default" to match network.mode "nat", got "agent_nat_allowlist"/,
    );
    const ok = loadOne(`${MINIMAL}network:\n  mode: allowlist\n  firewall_group: agent_nat_allowlist\n`);
    assert.equal(ok.profile.network.mode, "allowlist");
  });

  it("the network mode is implied by a standard firewall group, else nat", () => {
    assert.equal(
      loadOne(`${MINIMAL}network:\n  firewall_group: agent_nat_off\n`).profile.network.mode,
      "off",
    );
    assert.equal(loadOne(`${MINIMAL}network:\n  firewall_group: my_group\n`).profile.network.mode, "nat");
    assert.equal(loadOne(`${MINIMAL}network:\n  bridge: vmbr2\n`).profile.network.mode, "nat");
  });

  it("normalises behavior.inner_sandbox and its aliases", () => {
    const on = ["bubblewrap", "bwrap", "true", "yes", "1", "BWRAP", "'true'"];
    const off = ["off", "none", "false", "0", "disabled", "''"];
    for (const value of on) {
      const { profile } = loadOne(`${MINIMAL}behavior:\n  inner_sandbox: ${value}\n`);
      assert.equal(profile.behavior.inner_sandbox, "bubblewrap", value);
    }
    for (const value of off) {
      const { profile } = loadOne(`${MINIMAL}behavior:\n  inner_sandbox: ${value}\n`);
      assert.equal(profile.behavior.inner_sandbox, "off", value);
    }
    const args = loadOne(`${MINIMAL}behavior:\n  inner_sandbox_args: [--unshare-net, --die-with-parent]\n`);
    assert.deepEqual(args.profile.behavior.inner_sandbox_args, ["--unshare-net", "--die-with-parent"]);
  });

  it("accepts the keys the daemon ignores without a warning", () => {
    const { warnings } = loadOne(
      [
        MINIMAL,
        "secrets_bundle: default",
        "repo:\n  clone_path: /work/repo",
        "artifacts:\n  upload: true\n  endpoint: http://10.77.0.1:8846/upload",
        "storage:\n  workspace: persistent",
        "resources:\n  balloon: 2048",
        "behavior:\n  mode: dangerous",
        "",
      ].join("\n"),
    );
    assert.deepEqual(warnings, []);
  });

  it("an unknown key is a warning naming file, document and key, with a did-you-mean", () => {
    const { profile, warnings, file } = loadOne(`${MINIMAL}resources:\n  corse: 4\ndescription: big box\n`);
    assert.equal(profile.resources.cores, undefined);
    assert.deepEqual(warnings, [
      `${file} (document 1, profile "p"): resources.corse: unknown key, ignored (did you mean "resources.cores"?)`,
      `${file} (document 1, profile "p"): description: unknown key, ignored`,
    ]);
  });
});

describe("profiles: host mounts", () => {
  it("rejects host-mount keys anywhere in the tree with the spec's wording", () => {
    const { error } = loadError(
      `${MINIMAL}storage:\n  host_mount: /srv/data\nextras:\n  - hostPath: /etc\n  - name: ok\n`,
    );
    assert.equal(error.code, "PROFILE_INVALID");
    assert.ok(
      error.message.endsWith(
        'profile "p" requests host mounts at extras[0].hostPath, storage.host_mount; host bind mounts are not allowed (use workspace disks instead)',
      ),
      error.message,
    );
    assert.equal(error.details["profile"], "p");
  });

  it("recognises upstream's host-mount key patterns, case-insensitively", () => {
    const keys = [
      "host_mount",
      "bind_mount",
      "virtiofs",
      "virtio_fs",
      "binds",
      "mounts",
      "HostPath",
      "host-bind",
      "bindMounts",
      "x_HOST_mount_y",
    ];
    for (const key of keys) assert.deepEqual(hostMountKeys({ [key]: "/x" }), [key], key);
    for (const key of ["host", "bind", "mount", "hostname", "path", "workspace"]) {
      assert.deepEqual(hostMountKeys({ [key]: "/x" }), [], key);
    }
  });
});

describe("profiles: artifactRetentionMinutes", () => {
  it("takes the first retention key present, converted to minutes; 0 keeps artifacts", () => {
    const retention = (yaml: string) =>
      artifactRetentionMinutes(loadOne(`${MINIMAL}artifacts:\n${yaml}\n`).profile);
    assert.equal(retention("  retention_hours: 2"), 120);
    assert.equal(retention("  retention_days: 1"), 1440);
    assert.equal(retention("  ttl_minutes: 30\n  retention_days: 1"), 30);
    assert.equal(retention("  retention_minutes: 0"), undefined);
    assert.equal(artifactRetentionMinutes(loadOne(MINIMAL).profile), undefined);
  });
});

describe("the profiles the docs and --help examples name", () => {
  it("every `--profile NAME` in docs/ and the README is a profile shipped in profiles/", () => {
    const shipped = new Set(
      fs
        .readdirSync(PROFILES_DIR)
        .filter((f) => f.endsWith(".yaml"))
        .map((f) => f.slice(0, -".yaml".length)),
    );
    const repo = path.dirname(PROFILES_DIR);
    const files = [
      path.join(repo, "README.md"),
      ...fs.readdirSync(path.join(repo, "docs")).map((f) => path.join(repo, "docs", f)),
    ].filter((f) => f.endsWith(".md"));
    const wrong: string[] = [];
    for (const file of files) {
      for (const match of fs.readFileSync(file, "utf8").matchAll(/--profile[ =]([a-z][a-z0-9-]*)/g)) {
        // Placeholders in usage lines are upper case or <...>; these are names a user would copy.
        if (!shipped.has(match[1]!)) wrong.push(`${path.basename(file)}: --profile ${match[1]}`);
      }
    }
    assert.deepEqual(
      wrong,
      [],
      `examples name profiles that do not exist (shipped: ${[...shipped].join(", ")})`,
    );
  });
});

describe("profiles: the idle window (idle_stop, or upstream's behavior.idle_stop_minutes_default)", () => {
  it("idle_stop takes a duration; 0 turns idle stop off; neither key defers to the daemon", () => {
    assert.equal(profileIdleStopMs(loadOne(`${MINIMAL}idle_stop: 45m\n`).profile), 45 * 60_000);
    assert.equal(profileIdleStopMs(loadOne(`${MINIMAL}idle_stop: 90s\n`).profile), 90_000);
    assert.equal(profileIdleStopMs(loadOne(`${MINIMAL}idle_stop: 0\n`).profile), 0);
    assert.equal(profileIdleStopMs(loadOne(MINIMAL).profile), undefined);
    assert.equal(loadOne(MINIMAL).profile.idle_stop_keepalive, false);
    assert.equal(loadOne(`${MINIMAL}idle_stop_keepalive: true\n`).profile.idle_stop_keepalive, true);
  });

  it("upstream's key means the same in minutes; negative defers to the daemon", () => {
    const minutes = (n: number) =>
      loadOne(`${MINIMAL}behavior:\n  idle_stop_minutes_default: ${n}\n`).profile;
    assert.equal(profileIdleStopMs(minutes(30)), 30 * 60_000);
    assert.equal(profileIdleStopMs(minutes(0)), 0);
    assert.equal(profileIdleStopMs(minutes(-1)), undefined);
  });

  it("both keys in one profile, or a bare number, is refused with the fix", () => {
    const both = loadError(`${MINIMAL}idle_stop: 30m\nbehavior:\n  idle_stop_minutes_default: 30\n`);
    assert.equal(both.error.code, "PROFILE_INVALID");
    assert.match(both.error.message, /idle_stop: behavior\.idle_stop_minutes_default is set too.*keep one/);
    const bare = loadError(`${MINIMAL}idle_stop: 30\n`);
    assert.match(bare.error.message, /idle_stop: .*expected a duration such as 30s, 5m or 1h30m/);
  });
});
