/**
 * The daemon's half of `agentlab init`: what only the daemon can see (its profiles, Proxmox through its
 * backend, its database). Every check reports a status and, when not ok, the exact command that fixes
 * it; nothing here changes anything.
 */
import { accessSync, constants, statSync } from "node:fs";
import { hostSettings } from "../../config/host-settings.js";
import { AgentlabError, type DaemonChecks, type InitCheck } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
import type { ClusterVm, VmConfig } from "../proxmox/types.js";
import { quickCheck } from "../store/health.js";
import { daemonNode } from "./placement.js";
import { privilegesCheck } from "./privileges.js";
import { agentEnabled, isTemplateConfig } from "./sandbox/vm-config.js";

/** Longest any single Proxmox call of the checks may take, well inside the CLI's default 30 s. */
export const CHECK_CALL_MS = 10_000;

function withTimeout<T>(what: string, promise: Promise<T>, ms = CHECK_CALL_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new AgentlabError("PROXMOX_TIMEOUT", `Proxmox did not answer ${what} within ${ms / 1000}s`, {
            hint: "check that the Proxmox services run (systemctl status pveproxy pvedaemon) and the host load",
          }),
        ),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function asError(error: unknown): AgentlabError {
  return error instanceof AgentlabError
    ? error
    : new AgentlabError("PROXMOX_ERROR", (error as Error)?.message ?? String(error));
}

const DRIVE_KEY = /^(?:ide|sata|scsi|virtio)\d+$/;

/** Whether the config has a cloud-init drive (`ide2: local-zfs:vm-9000-cloudinit,media=cdrom`). */
export function hasCloudInitDrive(config: VmConfig): boolean {
  return Object.entries(config).some(
    ([key, value]) => DRIVE_KEY.test(key) && /cloudinit/.test(String(value)),
  );
}

/** The storage of the VM's first disk, where a cloud-init drive belongs too. */
function diskStorage(config: VmConfig): string {
  for (const [key, value] of Object.entries(config)) {
    if (!DRIVE_KEY.test(key)) continue;
    const text = String(value);
    if (/media=cdrom/.test(text)) continue;
    const storage = /^([A-Za-z0-9._-]+):/.exec(text)?.[1];
    if (storage) return storage;
  }
  return "local-lvm";
}

interface TemplateFinding {
  problem: string;
  fix: string;
}

async function templateFindings(
  ctx: DaemonContext,
  vmid: number,
  profiles: string[],
  cluster: ClusterVm[],
  node: string,
): Promise<TemplateFinding[]> {
  const vm = cluster.find((entry) => entry.vmid === vmid);
  const users = `profile${profiles.length > 1 ? "s" : ""} ${profiles.join(", ")}`;
  if (!vm) {
    return [
      {
        problem: `template VM ${vmid} (${users}) does not exist`,
        fix: `create template VM ${vmid} (docs/runbook.md) or set template_vmid of ${users} to an existing template (qm list)`,
      },
    ];
  }
  const found: TemplateFinding[] = [];
  if (node !== "" && vm.node !== node) {
    // sandbox new refuses it (placement.ts): the snippet, bindings and listener are on agentlabd's node.
    found.push({
      problem: `template VM ${vmid} (${users}) is on node ${vm.node}, not on agentlabd's node ${node}`,
      fix: `build a template on node ${node} and set template_vmid of ${users} to it`,
    });
  }
  const config = await withTimeout(
    `the config of VM ${vmid}`,
    ctx.backend.getConfig({ vmid, node: vm.node }),
  );
  // From the config: the cluster list has no `template` until pvestatd has reported the VM.
  if (!isTemplateConfig(config)) {
    found.push({ problem: `VM ${vmid} is not a template`, fix: `qm template ${vmid}` });
  }
  if (!agentEnabled(config.agent)) {
    found.push({
      problem: `VM ${vmid} has no guest agent enabled (agent: 1)`,
      fix: `qm set ${vmid} --agent 1`,
    });
  }
  if (!hasCloudInitDrive(config)) {
    found.push({
      problem: `VM ${vmid} has no cloud-init drive`,
      fix: `qm set ${vmid} --ide2 ${diskStorage(config)}:cloudinit`,
    });
  }
  return found;
}

async function templatesCheck(ctx: DaemonContext, cluster: ClusterVm[], node: string): Promise<InitCheck> {
  const byVmid = new Map<number, string[]>();
  for (const profile of ctx.profiles) {
    byVmid.set(profile.template_vmid, [...(byVmid.get(profile.template_vmid) ?? []), profile.name]);
  }
  if (byVmid.size === 0) return { name: "templates", status: "warn", detail: "no profiles name a template" };
  const findings: TemplateFinding[] = [];
  for (const [vmid, names] of [...byVmid].sort(([a], [b]) => a - b)) {
    try {
      findings.push(...(await templateFindings(ctx, vmid, names, cluster, node)));
    } catch (error) {
      const known = asError(error);
      findings.push({ problem: `VM ${vmid}: ${known.message}`, fix: known.hint });
    }
  }
  const vmids = [...byVmid.keys()].sort((a, b) => a - b).join(", ");
  if (findings.length === 0) {
    return {
      name: "templates",
      status: "ok",
      detail: `${vmids}: template, guest agent on, cloud-init drive`,
    };
  }
  return {
    name: "templates",
    status: "fail",
    detail: findings.map((f) => f.problem).join("; "),
    fix: findings.map((f) => f.fix).join(" && "),
  };
}

async function snippetsCheck(ctx: DaemonContext, node: string): Promise<InitCheck> {
  const { snippet_storage: storageName, snippets_dir: dir } = ctx.config;
  const problems: string[] = [];
  const fixes: string[] = [];
  const storages = await withTimeout(`the storages of node ${node}`, ctx.backend.listStorages(node));
  const storage = storages.find((s) => s.storage === storageName);
  if (!storage) {
    problems.push(`storage ${storageName} does not exist on node ${node}`);
    fixes.push(
      `pvesm add dir ${storageName} --path ${dir.replace(/\/snippets\/?$/, "")} --content snippets (or set snippet_storage in the config)`,
    );
  } else {
    if (!storage.content.includes("snippets")) {
      problems.push(
        `storage ${storageName} does not allow snippets (content ${storage.content.join(",") || "none"})`,
      );
      fixes.push(`pvesm set ${storageName} --content ${[...storage.content, "snippets"].join(",")}`);
    }
    if (!storage.enabled) {
      problems.push(`storage ${storageName} is disabled`);
      fixes.push(`pvesm set ${storageName} --disable 0`);
    }
  }
  let dirOk = false;
  try {
    if (!statSync(dir).isDirectory()) {
      problems.push(`${dir} is not a directory`);
      fixes.push(`rm ${dir} && mkdir -p ${dir}`);
    } else {
      accessSync(dir, constants.W_OK);
      dirOk = true;
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      problems.push(`snippets_dir ${dir} does not exist`);
      fixes.push(`mkdir -p ${dir}`);
    } else {
      problems.push(`snippets_dir ${dir} is not writable by the daemon (${code ?? "error"})`);
      fixes.push(`chown root ${dir} && chmod u+w ${dir}`);
    }
  }
  if (problems.length === 0 && dirOk) {
    return {
      name: "snippets",
      status: "ok",
      detail: `storage ${storageName} on ${node} has snippets content; ${dir} is writable`,
    };
  }
  return { name: "snippets", status: "fail", detail: problems.join("; "), fix: fixes.join(" && ") };
}

function databaseCheck(ctx: DaemonContext): InitCheck {
  const lines = quickCheck(ctx.store);
  if (lines.length === 1 && lines[0] === "ok") {
    return {
      name: "database",
      status: "ok",
      detail: `${ctx.store.path}: quick_check ok, schema version ${ctx.store.schemaVersion()}`,
    };
  }
  return {
    name: "database",
    status: "fail",
    detail: `${ctx.store.path}: quick_check: ${lines.slice(0, 3).join("; ")}`,
    fix: `systemctl stop agentlabd && cp ${ctx.store.path} ${ctx.store.path}.bak && sqlite3 ${ctx.store.path} "PRAGMA integrity_check;"`,
  };
}

export async function daemonChecks(ctx: DaemonContext): Promise<DaemonChecks> {
  const profiles: InitCheck =
    ctx.profiles.length > 0
      ? {
          name: "profiles",
          status: "ok",
          detail: `${ctx.profiles.length} loaded: ${ctx.profiles.map((p) => p.name).join(", ")}`,
        }
      : {
          name: "profiles",
          status: "fail",
          detail: `no profiles in ${ctx.config.profiles_dir}`,
          fix: `cp /opt/agentlab/profiles/*.yaml ${ctx.config.profiles_dir}/ && systemctl restart agentlabd`,
        };

  let backend: InitCheck;
  let cluster: ClusterVm[] | undefined;
  let node = ctx.config.proxmox_node;
  let version: { version: string } | undefined;
  try {
    version = await withTimeout("the version request", ctx.backend.version());
    cluster = await withTimeout("the VM list", ctx.backend.listVms());
    if (node === "") node = await withTimeout("the node list", daemonNode(ctx, undefined, { fresh: true }));
    backend = {
      name: "backend",
      status: "ok",
      detail: `${ctx.backend.kind}: Proxmox VE ${version.version}${node ? `, node ${node}` : ""}`,
    };
  } catch (error) {
    const known = asError(error);
    backend = {
      name: "backend",
      status: "fail",
      detail: `${ctx.backend.kind}: ${known.message}`,
      fix: known.hint,
    };
  }

  const skipped = (name: string): InitCheck => ({
    name,
    status: "warn",
    detail: `not checked: ${cluster === undefined ? "Proxmox is unreachable" : "agentlabd's node is unknown"} (see backend)`,
  });
  let templates: InitCheck;
  let snippets: InitCheck;
  let privileges: InitCheck;
  if (cluster === undefined || version === undefined || node === "") {
    templates = skipped("templates");
    snippets = skipped("snippets");
    privileges = skipped("privileges");
  } else {
    try {
      privileges = await withTimeout(
        "the privilege check",
        privilegesCheck(ctx, { version: version.version, cluster, node }),
      );
    } catch (error) {
      const known = asError(error);
      privileges = { name: "privileges", status: "fail", detail: known.message, fix: known.hint };
    }
    templates = await templatesCheck(ctx, cluster, node);
    try {
      snippets = await snippetsCheck(ctx, node);
    } catch (error) {
      const known = asError(error);
      snippets = { name: "snippets", status: "fail", detail: known.message, fix: known.hint };
    }
  }

  return {
    checks: [profiles, templates, snippets, backend, privileges, databaseCheck(ctx)],
    host: hostSettings(ctx.config),
  };
}
