/**
 * pvesh on a cluster: a call whose handler has `proxyto => 'node'` and names another node is not run
 * here but over SSH as `pvesh --noproxy <cmd> <path> --output-format json <args>` on that node
 * (pve-manager PVE/CLI/pvesh.pm:86-109 check_proxyto, :111-144 proxy_handler, :420-422). This file
 * decides which routes are proxied and turns the remote run's output into what the local pvesh prints.
 */
import type { Route } from "./routes.js";

/**
 * The routes under /nodes/{node} whose handler has no `proxyto`: pvesh runs them locally whatever node
 * the path names. Every other /nodes/{node}/… route of the simulator is proxied (each has
 * `proxyto => 'node'` in its source). Routes outside /nodes/{node} have no node to proxy to.
 */
const LOCAL_ROUTES = new Set([
  "GET /nodes/{node}", // pve-manager PVE/API2/Nodes.pm:208 ('index' of Nodes::Nodeinfo)
  "GET /nodes/{node}/storage/{storage}", // pve-storage src/PVE/API2/Storage/Status.pm:276 ('diridx')
  "GET /nodes/{node}/tasks/{upid}", // pve-manager PVE/API2/Tasks.pm:262 ('upid_index')
  "GET /nodes/{node}/qemu/{vmid}/snapshot/{snapname}", // qemu-server src/PVE/API2/Qemu.pm:6234 ('snapshot_cmd_idx')
]);

/** Whether pvesh forwards this route to the node in its path (its handler has `proxyto => 'node'`). */
export function isProxied(route: Route): boolean {
  return route.path.startsWith("/nodes/{node}") && !LOCAL_ROUTES.has(`${route.method} ${route.path}`);
}

/** What the remote `pvesh --noproxy …` did. */
export interface RemoteRun {
  code: number;
  stdout: string;
  stderr: string;
  /** The handler's schema returns `null` (e.g. `PUT …/config`): the local pvesh then prints nothing. */
  returnsNull: boolean;
}

/** What the local pvesh does with it. */
export type ProxiedOutcome =
  | { ok: true; stderr: string[]; data: unknown; returnsNull: boolean }
  | { ok: false; stderr: string[]; error: string };

/**
 * run_command's line splitting (pve-common src/PVE/Cmd.pm:230-238, 275): a line ends at `\n`, `\r\n`,
 * `\r` or a run of backspaces; the terminator is dropped; a last unterminated line is passed as well
 * when it is not empty.
 */
export function runCommandLines(text: string): string[] {
  const lines: string[] = [];
  let rest = text;
  for (;;) {
    const m = /^([^\x08\r\n]*)(?:\n|\x08+|\r\n?)/.exec(rest);
    if (!m) break;
    lines.push(m[1]!);
    rest = rest.slice(m[0].length);
  }
  if (rest !== "") lines.push(rest);
  return lines;
}

/**
 * proxy_handler's result. stdout: the lines concatenated without newlines (`outfunc => sub { $res .=
 * shift }`, pvesh.pm:136), decoded as JSON when that works, else returned as the raw string
 * (pvesh.pm:139-141) — so a worker's log followed by its JSON-quoted UPID becomes one string. stderr:
 * with `errmsg` set, run_command prints each non-empty line but holds the last one back (Cmd.pm:148-160);
 * on success that one is printed too (Cmd.pm:305-306), on a non-zero exit it becomes the error
 * `proxy handler failed: <line>` (Cmd.pm:287-294, 320-322), or `… exit code N` without any stderr.
 */
export function proxiedOutcome(remote: RemoteRun): ProxiedOutcome {
  const errLines = runCommandLines(remote.stderr).filter((line) => line !== "");
  if (remote.code !== 0) {
    const last = errLines.pop();
    return {
      ok: false,
      stderr: errLines,
      error: `proxy handler failed: ${last ?? `exit code ${remote.code}`}`,
    };
  }
  const res = runCommandLines(remote.stdout).join("");
  let data: unknown;
  try {
    data = JSON.parse(res);
  } catch {
    data = res;
  }
  return { ok: true, stderr: errLines, data, returnsNull: remote.returnsNull };
}
