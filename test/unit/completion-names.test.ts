import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { nameKind, POSITIONAL_KINDS } from "../../src/cli/completion-names.js";
import { REPO_ROOT } from "../helpers/paths.js";

describe("which words completion fills from the daemon", () => {
  test("the first positional of a command, and the value of --profile/--workspace", () => {
    assert.equal(nameKind(["sandbox", "show"]), "vmid");
    assert.equal(
      nameKind(["--json", "sandbox", "lease", "renew", "--ttl", "1h"]),
      "vmid",
      "1h is --ttl's value",
    );
    assert.equal(
      nameKind(["--socket", "/run/x.sock", "sandbox", "show"]),
      "vmid",
      "the socket path is no command word",
    );
    assert.equal(nameKind(["sandbox", "destroy", "--force"]), "vmid");
    assert.equal(nameKind(["sandbox", "destroy", "--force", "1001"]), undefined, "--force takes no value");
    assert.equal(nameKind(["sandbox", "show", "--json", "1001"]), undefined);
    assert.equal(nameKind(["workspace", "fsck", "--repair=true"]), "workspace");
    assert.equal(nameKind(["sandbox", "lease", "renew"]), "vmid");
    assert.equal(nameKind(["sandbox", "show", "1001"]), undefined, "the VMID is there already");
    assert.equal(nameKind(["workspace", "snapshot", "restore"]), "workspace");
    assert.equal(nameKind(["sandbox", "new", "--profile"]), "profile");
    assert.equal(nameKind(["job", "run", "--workspace"]), "workspace");
    assert.equal(nameKind(["sandbox"]), undefined, "a sub-command comes next");
  });

  test("every command whose argument is a VMID, workspace, session or job id is known", () => {
    // docs/cli.md is generated from --help: a new command with such an argument must be added here.
    const cli = readFileSync(join(REPO_ROOT, "docs/cli.md"), "utf8");
    const kinds: Record<string, string> = {
      vmid: "vmid",
      workspace: "workspace",
      session: "session",
      id: "job",
      job_id: "job",
    };
    const missing: string[] = [];
    for (const match of cli.matchAll(/^agentlab ((?:[a-z-]+ )+)<([a-z_]+)>/gm)) {
      const command = match[1]!.trim();
      const kind = kinds[match[2]!];
      if (kind === undefined || command === "token revoke") continue;
      if (POSITIONAL_KINDS[command] !== kind) missing.push(`${command} <${match[2]}>`);
    }
    assert.deepEqual(missing, []);
  });
});
