/**
 * Proxmox's `dns-name` format, which every VM name must pass (pve-common src/PVE/JSONSchema.pm,
 * `pve_verify_dns_name`): labels of letters, digits and dashes that start and end with a letter or
 * digit, joined by single dots. Proxmox refuses anything else at clone or create time with
 * `value does not look like a valid DNS name`, after the daemon has already reserved a VMID, so the
 * daemon applies the same rule when it validates a request.
 */
const LABEL = "[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";

export const DNS_NAME_RE = new RegExp(`^(?:${LABEL}\\.)*${LABEL}$`);

export const DNS_NAME_RULE =
  "a DNS name: labels of letters, digits and dashes, each starting and ending with a letter or digit, joined by single dots";
