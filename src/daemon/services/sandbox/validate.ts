/**
 * `sandbox new --dry-run` (sandbox.validate): what sandbox.create would do, and every problem it would
 * meet, without creating or reserving anything.
 */
import { closest } from "../../../config/suggest.js";
import { type PlanIssue, SandboxName, type SandboxPlan, SandboxTag } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import { describe } from "../maintenance-steps.js";
import { templateNodeRefusal } from "../placement.js";
import { agentEnabled, diskSizeGb, isTemplateConfig, rootDisk, sandboxTags } from "./vm-config.js";
import { type VmidAllocator, vmidConflictMessage } from "./vmid-allocator.js";

export interface ValidateParams {
  profile: string;
  name?: string | undefined;
  ttl_minutes?: number | undefined;
  keepalive?: boolean | undefined;
  vmid?: number | undefined;
  tags?: string[] | undefined;
}

export interface ValidateResult {
  ok: boolean;
  errors: PlanIssue[];
  warnings: PlanIssue[];
  plan: SandboxPlan;
}

/**
 * Format problems are reported here rather than refused, so one call lists them all. The VMID it
 * plans is what the allocator would choose now; only create's reservation makes one stick.
 */
export async function validateSandbox(
  ctx: DaemonContext,
  vmids: VmidAllocator,
  params: ValidateParams,
): Promise<ValidateResult> {
  const errors: PlanIssue[] = [];
  const warnings: PlanIssue[] = [];
  const issue = (code: string, field: string | undefined, message: string): PlanIssue => ({
    code,
    ...(field ? { field } : {}),
    message,
  });
  const plan: SandboxPlan = { profile: params.profile, tags: [] };

  const profile = ctx.profiles.find((p) => p.name === params.profile);
  if (!profile) {
    const names = ctx.profiles.map((p) => p.name).sort();
    const near = closest(params.profile, names);
    errors.push(
      issue(
        "unknown_profile",
        "profile",
        `unknown profile "${params.profile}"${near ? ` (did you mean ${near}?)` : ""}; loaded profiles: ${names.join(", ") || "none"}`,
      ),
    );
  }

  const nameCheck = params.name === undefined ? undefined : SandboxName.safeParse(params.name);
  if (nameCheck?.error) {
    errors.push(
      issue(
        "invalid_field_value",
        "name",
        `invalid name "${params.name}": ${nameCheck.error.issues[0]?.message}`,
      ),
    );
  }
  const tags = sandboxTags(params.tags ?? []);
  for (const tag of tags) {
    if (!SandboxTag.safeParse(tag).success)
      errors.push(issue("invalid_tag", "tags", `invalid tag "${tag}": tags use letters, digits and _ + . -`));
  }
  if (tags.length > 16) errors.push(issue("invalid_field_value", "tags", "at most 16 tags"));
  plan.tags = tags.filter((tag) => SandboxTag.safeParse(tag).success);

  if (params.ttl_minutes !== undefined && params.ttl_minutes <= 0) {
    errors.push(issue("invalid_field_value", "ttl_minutes", "ttl_minutes must be positive"));
  } else {
    const ttl = params.ttl_minutes ?? profile?.behavior.ttl_minutes_default;
    if (ttl !== undefined && ttl > 0) {
      plan.ttl_minutes = ttl;
      plan.lease_expires_at = new Date(ctx.clock.now().getTime() + ttl * 60_000).toISOString();
    } else if (profile) {
      warnings.push(
        issue("no_ttl", "ttl_minutes", "no TTL: the sandbox would never expire (give --ttl to bound it)"),
      );
    }
  }
  if (profile) {
    plan.keepalive = params.keepalive ?? profile.behavior.keepalive_default;
    plan.template_vmid = profile.template_vmid;
    plan.network_mode = profile.network.mode;
    if (profile.network.bridge !== undefined) plan.bridge = profile.network.bridge;
    if (profile.resources.cores !== undefined) plan.cores = profile.resources.cores;
    if (profile.resources.memory_mb !== undefined) plan.memory_mb = profile.resources.memory_mb;
    if (profile.storage.root_size_gb !== undefined) plan.root_size_gb = profile.storage.root_size_gb;
  }

  const validVmid = params.vmid === undefined || (params.vmid >= 100 && params.vmid <= 999_999_999);
  if (!validVmid) {
    errors.push(issue("invalid_field_value", "vmid", "vmid must be between 100 and 999999999"));
  }

  const cluster = await ctx.backend.listVms();
  if (profile) {
    const template = cluster.find((vm) => vm.vmid === profile.template_vmid);
    if (!template) {
      errors.push(
        issue(
          "template_validation_failed",
          "profile",
          `template VM ${profile.template_vmid} of profile "${profile.name}" does not exist`,
        ),
      );
    } else {
      plan.node = template.node;
      try {
        const elsewhere = await templateNodeRefusal(ctx, template, profile.name);
        if (elsewhere) errors.push(issue("template_on_other_node", "profile", elsewhere.message));
      } catch (error) {
        errors.push(issue("template_on_other_node", "profile", describe(error)));
      }
      if (template.name) plan.template_name = template.name;
      // Whether it is a template comes from its config: the cluster list leaves `template` out
      // until pvestatd has reported the VM (API2Tools.pm:84-116).
      const config = await ctx.backend.getConfig({ vmid: template.vmid, node: template.node });
      const isTemplate = isTemplateConfig(config);
      const full = ctx.config.proxmox_clone_mode === "full" || !isTemplate;
      plan.clone = full ? "full" : "linked";
      if (!isTemplate && ctx.config.proxmox_clone_mode === "linked") {
        warnings.push(
          issue(
            "template_not_template",
            "profile",
            `VM ${template.vmid} is not a template, and linked clones need one: it would be cloned in full (slower, uses more disk); make it a template with qm template ${template.vmid}`,
          ),
        );
      }
      if (config.agent === undefined) {
        errors.push(
          issue(
            "template_validation_failed",
            "profile",
            `template VM ${template.vmid} does not have qemu-guest-agent enabled (missing 'agent:' config)`,
          ),
        );
      } else if (!agentEnabled(config.agent)) {
        errors.push(
          issue(
            "template_validation_failed",
            "profile",
            `template VM ${template.vmid} has qemu-guest-agent explicitly disabled`,
          ),
        );
      }
      if (!Object.values(config).some((value) => String(value).includes("cloudinit"))) {
        errors.push(
          issue(
            "template_validation_failed",
            "profile",
            `template VM ${template.vmid} does not have a cloud-init drive configured`,
          ),
        );
      }
      if (plan.cores === undefined && Number.isFinite(Number(config.cores)))
        plan.cores = Number(config.cores);
      if (plan.memory_mb === undefined && Number.isFinite(Number(config.memory)))
        plan.memory_mb = Number(config.memory);
      const disk = rootDisk(config);
      const have = disk ? diskSizeGb(config[disk]) : undefined;
      if (have !== undefined && (plan.root_size_gb === undefined || have > plan.root_size_gb))
        plan.root_size_gb = have;
    }
  }

  const taken = new Set(cluster.map((vm) => vm.vmid));
  if (params.vmid !== undefined && validVmid) {
    plan.vmid = params.vmid;
    plan.vmid_source = "requested";
    const conflict = await vmids.conflict(params.vmid, taken);
    if (conflict) errors.push(issue("resource_conflict", "vmid", vmidConflictMessage(conflict, params.vmid)));
  } else if (params.vmid === undefined) {
    try {
      plan.vmid = await vmids.nextFree(taken);
      plan.vmid_source = "next_free";
    } catch (error) {
      errors.push(issue("allocation_failed", "vmid", describe(error)));
    }
  }
  if (params.name !== undefined) plan.name = params.name;
  else if (plan.vmid !== undefined) plan.name = `sandbox-${plan.vmid}`;

  return { ok: errors.length === 0, errors, warnings, plan };
}
