import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { load } from "js-yaml";
import {
  AGENT_RUNNER_PATH,
  BOOTSTRAP_JSON_PATH,
  REPORT_READY_PATH,
  renderUserData,
  WORKSPACE_MOUNT_UNIT_PATH,
  WORKSPACE_OWNER_UNIT_PATH,
  WORKSPACE_UDEV_RULE_PATH,
} from "../../src/daemon/guest/cloud-init.js";
import { runnerScript } from "../../src/daemon/guest/runner-script.js";
import { REPO_ROOT } from "../helpers/paths.js";

interface WriteFile {
  path: string;
  content: string;
  owner: string;
  permissions: string;
  defer?: boolean;
}
interface UserData {
  runcmd: string[][];
  write_files?: WriteFile[];
}

const READY_TOKEN = "0123456789abcdef0123456789abcdef";
const JOB_TOKEN = "fedcba9876543210fedcba9876543210";
const CONTROLLER = "http://10.77.0.1:8844";

const SYSTEMD_RUN = [
  "systemd-run",
  "--unit=agentlab-runner",
  "--uid=agent",
  "--gid=agent",
  "--setenv=HOME=/home/agent",
  "--property=WorkingDirectory=/home/agent",
  "--property=RuntimeDirectory=agentlab",
  "--property=RuntimeDirectoryMode=0700",
  AGENT_RUNNER_PATH,
];

function render(job?: { token: string; runnerScript: string }): UserData {
  return load(
    renderUserData({
      vmid: 123,
      hostname: "job-01234567",
      bootstrap: { token: READY_TOKEN, controllerUrl: CONTROLLER },
      ...(job ? { job } : {}),
    }),
  ) as UserData;
}

const file = (doc: UserData, at: string) => doc.write_files?.find((f) => f.path === at);

describe("cloud-init user-data of a job sandbox", () => {
  const script = runnerScript();

  it("is rendered from the runner shipped in scripts/guest/agent-runner.sh", () => {
    assert.equal(script, fs.readFileSync(path.join(REPO_ROOT, "scripts/guest/agent-runner.sh"), "utf8"));
    assert.ok(script.startsWith("#!/bin/sh"), "the runner is a POSIX sh script");
  });

  it("puts job_token into bootstrap.json next to the ready token, on one line, still agent-only", () => {
    const doc = render({ token: JOB_TOKEN, runnerScript: script });
    const bootstrap = file(doc, BOOTSTRAP_JSON_PATH);
    assert.ok(bootstrap);
    assert.equal(
      bootstrap.content,
      `{"token":"${READY_TOKEN}","controller":"${CONTROLLER}","vmid":123,"job_token":"${JOB_TOKEN}"}\n`,
    );
    assert.equal(bootstrap.owner, "agent:agent");
    assert.equal(bootstrap.permissions, "0600");
    assert.equal(bootstrap.defer, true);
  });

  it("installs the runner as root, mode 0755, byte for byte", () => {
    const doc = render({ token: JOB_TOKEN, runnerScript: script });
    const runner = file(doc, AGENT_RUNNER_PATH);
    assert.deepEqual(runner, {
      path: "/usr/local/lib/agentlab/agent-runner",
      content: script,
      owner: "root:root",
      permissions: "0755",
    });
    // Content YAML could mangle (a document marker, tabs, quotes, trailing spaces) survives too.
    const tricky = '#!/bin/sh\n---\n\techo \'a: b\' "#x"  \n...\n: "$X"\n';
    assert.equal(
      file(render({ token: JOB_TOKEN, runnerScript: tricky }), AGENT_RUNNER_PATH)?.content,
      tricky,
    );
  });

  it("adds git, curl and jq to the package step and starts the runner last, detached as agent", () => {
    const doc = render({ token: JOB_TOKEN, runnerScript: script });
    assert.deepEqual(doc.runcmd[0]!.slice(3), [
      "agentlab-packages",
      "qemu-guest-agent:qemu-ga",
      "git:git",
      "curl:curl",
      "jq:jq",
    ]);
    assert.equal(doc.runcmd.length, 5);
    assert.equal(doc.runcmd[3]![3], "agentlab-report-ready", "the ready report still runs before the runner");
    assert.match(doc.runcmd[3]![2]!, new RegExp(REPORT_READY_PATH));
    assert.deepEqual(doc.runcmd.at(-1), SYSTEMD_RUN);
  });

  it("without a job: no job_token, no runner, no extra packages, no systemd-run", () => {
    const doc = render();
    const bootstrap = JSON.parse(file(doc, BOOTSTRAP_JSON_PATH)?.content ?? "{}") as Record<string, unknown>;
    assert.deepEqual(Object.keys(bootstrap), ["token", "controller", "vmid"]);
    assert.equal(file(doc, AGENT_RUNNER_PATH), undefined);
    assert.deepEqual(
      doc.write_files?.map((f) => f.path),
      [
        WORKSPACE_MOUNT_UNIT_PATH,
        WORKSPACE_OWNER_UNIT_PATH,
        WORKSPACE_UDEV_RULE_PATH,
        BOOTSTRAP_JSON_PATH,
        REPORT_READY_PATH,
      ],
    );
    assert.deepEqual(doc.runcmd[0]!.slice(3), ["agentlab-packages", "qemu-guest-agent:qemu-ga"]);
    assert.equal(doc.runcmd.length, 4);
    assert.ok(!doc.runcmd.some((cmd) => cmd[0] === "systemd-run"));
  });

  it("refuses a job without the bootstrap controller URL", () => {
    assert.throws(
      () => renderUserData({ vmid: 123, hostname: "h", job: { token: JOB_TOKEN, runnerScript: script } }),
      {
        name: "Error",
        message: "a job sandbox needs the bootstrap controller URL: render it with bootstrap too",
      },
    );
  });
});
