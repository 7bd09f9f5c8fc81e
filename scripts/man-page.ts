/**
 * The agentlab(1) man page, from the same help texts as docs/cli.md: a short NAME/SYNOPSIS/DESCRIPTION,
 * then every command's --help as it prints, preformatted. Installed by scripts/install.sh.
 */
import { VERSION } from "../src/version.js";

/** Text safe inside a roff no-fill block: backslashes escaped, no line taken for a request. */
function roffText(text: string): string {
  return text
    .replace(/\\/g, "\\e")
    .split("\n")
    .map((line) => (/^[.']/.test(line) ? `\\&${line}` : line))
    .join("\n");
}

export function manPage(texts: ReadonlyArray<{ path: string[]; text: string }>): string {
  const lines = [
    '.\\" Generated from agentlab --help by npm run docs (scripts/gen-docs.ts); do not edit by hand.',
    `.TH AGENTLAB 1 "" "agentlab ${VERSION}" "User Commands"`,
    ".SH NAME",
    "agentlab \\- sandboxes, workspaces and jobs on a Proxmox VE host, through agentlabd",
    ".SH SYNOPSIS",
    ".B agentlab",
    ".I command",
    "[\\fIoptions\\fR]",
    ".SH DESCRIPTION",
    "agentlab talks JSON-RPC to agentlabd on /run/agentlab/agentlabd.sock, or to a remote daemon saved by",
    '.BR "agentlab connect" .',
    "Every command takes --json. Exit status: 0 ok, 1 failure, 2 usage.",
    "The sections below are each command's --help.",
    ".SH COMMANDS",
  ];
  for (const { path, text } of texts) {
    lines.push(
      `.SS "agentlab${path.length > 0 ? ` ${path.join(" ")}` : ""}"`,
      ".nf",
      roffText(text.trimEnd()),
      ".fi",
    );
  }
  lines.push(
    ".SH FILES",
    ".TP",
    "/etc/agentlab/config.yaml",
    "agentlabd's configuration (docs/configuration.md).",
    ".TP",
    "~/.config/agentlab/client.json",
    "the endpoint, token and pinned certificate saved by agentlab connect.",
    ".SH SEE ALSO",
    "/opt/agentlab/docs/cli.md, /opt/agentlab/docs/troubleshooting.md, /opt/agentlab/docs/runbook.md",
    "",
  );
  return lines.join("\n");
}
