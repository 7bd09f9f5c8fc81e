/**
 * A mount namespace and capability set built from a systemd unit file's own [Service] settings, for
 * running agentlabd the way that unit would run it — without systemd as PID 1 (there is none here).
 *
 * The test maps the host below a root prefix H: every real path P the daemon or the simulator writes
 * is H+P (the simulator's pvesh/qm write below PVESIM_HOST_ROOT=H, the daemon's state, run and log
 * directories are configured at H/var/lib/agentlab etc.). The namespace then makes H+P writable
 * exactly when the unit leaves P writable, and everything else read-only. The simulator's own
 * directory stands for /etc/pve (pmxcfs) and the storages (/var/lib/vz): it is writable only when the
 * unit leaves both writable.
 *
 * The namespace is stricter than the unit outside these paths (the whole file system is read-only),
 * so a write the list below does not know shows up as a failure, never as a silent pass. A [Service]
 * setting this module neither models nor lists as irrelevant is refused, so a new hardening option in
 * the unit fails the test until it is modelled.
 */
import { readFileSync } from "node:fs";

/** The [Service] assignments of a unit and its drop-ins, in order (systemd's merge: later wins, `X=` resets lists). */
export interface ServiceSettings {
  protectSystem: "no" | "yes" | "full" | "strict";
  protectHome: "no" | "yes" | "read-only" | "tmpfs";
  privateTmp: boolean;
  readWritePaths: Array<{ path: string; optional: boolean }>;
  readOnlyPaths: Array<{ path: string; optional: boolean }>;
  /** Directories systemd creates and keeps writable even under ProtectSystem=strict. */
  managedDirs: string[];
  /** undefined: the full set. */
  capabilityBoundingSet: { drop: boolean; caps: string[] } | undefined;
  noNewPrivileges: boolean;
  user: string;
  /** Settings present that restrict the processes (and so any QEMU started through pvesh). */
  restrictions: string[];
}

/** Settings that decide where the service may write, or with which privileges: modelled here. */
const MODELLED = new Set([
  "ProtectSystem",
  "ProtectHome",
  "PrivateTmp",
  "ReadWritePaths",
  "ReadOnlyPaths",
  "RuntimeDirectory",
  "StateDirectory",
  "LogsDirectory",
  "CacheDirectory",
  "CapabilityBoundingSet",
  "NoNewPrivileges",
  "User",
]);

/** Settings with no effect on which files the daemon and pvesh can write. */
const NO_FILE_EFFECT = new Set([
  "Type",
  "ExecStart",
  "ExecStartPost",
  "ExecReload",
  "Restart",
  "RestartSec",
  "TimeoutStopSec",
  "KillSignal",
  "KillMode",
  "Group",
  "UMask",
  "RuntimeDirectoryMode",
  "StateDirectoryMode",
  "LogsDirectoryMode",
  "CacheDirectoryMode",
  "StandardOutput",
  "StandardError",
  "SyslogIdentifier",
]);

/**
 * Known restrictions that do not change where pvesh's workers write (seccomp filters, kernel module
 * and cgroup protections), but that a QEMU process started through pvesh would inherit. Not modelled
 * in the namespace; reported in `restrictions`.
 */
const INHERITED_ONLY = new Set([
  "ProtectKernelModules",
  "ProtectKernelTunables",
  "ProtectKernelLogs",
  "ProtectControlGroups",
  "RestrictSUIDSGID",
  "LockPersonality",
  "RestrictNamespaces",
  "RestrictRealtime",
  "MemoryDenyWriteExecute",
  "SystemCallFilter",
  "SystemCallArchitectures",
  "PrivateDevices",
]);

const bool = (v: string): boolean => /^(1|yes|true|on)$/i.test(v);

function pathList(value: string): Array<{ path: string; optional: boolean }> {
  return value
    .split(/\s+/)
    .filter(Boolean)
    .map((word) => {
      const optional = word.startsWith("-");
      const path = word.replace(/^[-+]+/, "");
      if (!path.startsWith("/")) throw new Error(`not an absolute path in a unit path list: ${word}`);
      return { path, optional };
    });
}

/** Parses the [Service] section of each text (the unit, then its drop-ins). */
export function parseService(...texts: string[]): ServiceSettings {
  const s: ServiceSettings = {
    protectSystem: "no",
    protectHome: "no",
    privateTmp: false,
    readWritePaths: [],
    readOnlyPaths: [],
    managedDirs: [],
    capabilityBoundingSet: undefined,
    noNewPrivileges: false,
    user: "root",
    restrictions: [],
  };
  const restrictions = new Map<string, boolean>();
  for (const text of texts) {
    let section = "";
    for (const raw of text.replace(/\\\n/g, " ").split("\n")) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
      const header = /^\[(.+)\]$/.exec(line);
      if (header) {
        section = header[1]!;
        continue;
      }
      if (section !== "Service") continue;
      const eq = line.indexOf("=");
      if (eq < 0) throw new Error(`not an assignment in [Service]: ${line}`);
      const key = line.slice(0, eq).trim();
      const value = line.slice(eq + 1).trim();
      if (INHERITED_ONLY.has(key)) {
        restrictions.set(key, value !== "" && !/^(0|no|false|off)$/i.test(value));
        continue;
      }
      if (NO_FILE_EFFECT.has(key)) continue;
      if (!MODELLED.has(key))
        throw new Error(
          `unit setting ${key}= is not modelled by test/system/unit-namespace.ts: model it there, or list it as without effect on file writes`,
        );
      switch (key) {
        case "ProtectSystem": {
          const v = value.toLowerCase();
          s.protectSystem = v === "strict" || v === "full" ? v : bool(v) ? "yes" : "no";
          break;
        }
        case "ProtectHome": {
          const v = value.toLowerCase();
          s.protectHome = v === "read-only" || v === "tmpfs" ? v : bool(v) ? "yes" : "no";
          break;
        }
        case "PrivateTmp":
          s.privateTmp = bool(value);
          break;
        case "ReadWritePaths":
          s.readWritePaths = value === "" ? [] : [...s.readWritePaths, ...pathList(value)];
          break;
        case "ReadOnlyPaths":
          s.readOnlyPaths = value === "" ? [] : [...s.readOnlyPaths, ...pathList(value)];
          break;
        case "RuntimeDirectory":
        case "StateDirectory":
        case "LogsDirectory":
        case "CacheDirectory": {
          const base = {
            RuntimeDirectory: "/run",
            StateDirectory: "/var/lib",
            LogsDirectory: "/var/log",
            CacheDirectory: "/var/cache",
          }[key];
          for (const name of value.split(/\s+/).filter(Boolean))
            s.managedDirs.push(`${base}/${name.split(":")[0]}`);
          break;
        }
        case "CapabilityBoundingSet": {
          if (value === "") {
            s.capabilityBoundingSet = undefined;
            break;
          }
          const drop = value.startsWith("~");
          const caps = value.replace(/^~/, "").split(/\s+/).filter(Boolean);
          s.capabilityBoundingSet = { drop, caps };
          break;
        }
        case "NoNewPrivileges":
          s.noNewPrivileges = bool(value);
          break;
        case "User":
          s.user = value;
          break;
      }
    }
  }
  s.restrictions = [...restrictions].filter(([, on]) => on).map(([key]) => key);
  if (s.protectSystem !== "no") s.restrictions.push(`ProtectSystem=${s.protectSystem}`);
  if (s.protectHome !== "no") s.restrictions.push(`ProtectHome=${s.protectHome}`);
  if (s.privateTmp) s.restrictions.push("PrivateTmp");
  if (s.readOnlyPaths.length > 0) s.restrictions.push("ReadOnlyPaths");
  if (s.capabilityBoundingSet) s.restrictions.push("CapabilityBoundingSet");
  if (s.noNewPrivileges) s.restrictions.push("NoNewPrivileges");
  return s;
}

export function readUnit(path: string, ...dropins: string[]): ServiceSettings {
  return parseService(readFileSync(path, "utf8"), ...dropins.map((d) => readFileSync(d, "utf8")));
}

const isUnder = (path: string, dir: string): boolean =>
  dir === "/" || path === dir || path.startsWith(`${dir}/`);

/**
 * Whether the service may write real path P under these settings (systemd `namespace.c`: strict
 * makes `/` read-only except /proc, /sys, /dev; yes: /usr, /boot, /efi; full: also /etc;
 * ReadWritePaths, the managed directories and PrivateTmp's /tmp, /var/tmp stay writable).
 */
export function writable(s: ServiceSettings, p: string): boolean {
  if (s.readOnlyPaths.some((r) => isUnder(p, r.path))) return false;
  if (s.protectHome !== "no" && ["/home", "/root", "/run/user"].some((d) => isUnder(p, d))) return false;
  if (s.readWritePaths.some((r) => isUnder(p, r.path))) return true;
  if (s.managedDirs.some((d) => isUnder(p, d))) return true;
  if (s.privateTmp && ["/tmp", "/var/tmp"].some((d) => isUnder(p, d))) return true;
  switch (s.protectSystem) {
    case "strict":
      return ["/proc", "/sys", "/dev"].some((d) => isUnder(p, d));
    case "full":
      return !["/usr", "/boot", "/efi", "/etc"].some((d) => isUnder(p, d));
    case "yes":
      return !["/usr", "/boot", "/efi"].some((d) => isUnder(p, d));
    default:
      return true;
  }
}

/** setpriv's name of a capability: CAP_NET_ADMIN → net_admin. */
const setprivCap = (cap: string): string => cap.toLowerCase().replace(/^cap_/, "");

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

export interface NamespacePlan {
  /** The command that runs `argv` in the namespace (its PID is argv's: unshare and sh exec). */
  command: string[];
  /** Host root paths made writable (H+P), for diagnostics. */
  writablePaths: string[];
}

/**
 * The command running `argv` as the unit would: a private mount namespace where every mount is
 * read-only except /proc, /sys and /dev, then H+P bound writable for each P of `hostPaths` the unit
 * leaves writable, `extraWritable` the same way (each with the real paths it stands for), PrivateTmp as
 * a tmpfs on H/tmp and H/var/tmp, then setpriv for the bounding set and no_new_privs.
 */
export function namespaceCommand(
  s: ServiceSettings,
  hostRootDir: string,
  hostPaths: string[],
  extraWritable: Array<{ dir: string; standsFor: string[] }>,
  argv: string[],
): NamespacePlan {
  if (s.user !== "root") throw new Error(`the unit runs as User=${s.user}; only root is modelled`);
  const writablePaths: string[] = [];
  for (const p of hostPaths) if (writable(s, p)) writablePaths.push(`${hostRootDir}${p}`);
  for (const e of extraWritable) if (e.standsFor.every((p) => writable(s, p))) writablePaths.push(e.dir);
  const tmpfs = s.privateTmp ? [`${hostRootDir}/tmp`, `${hostRootDir}/var/tmp`] : [];
  const setpriv: string[] = [];
  if (s.capabilityBoundingSet) {
    const { drop, caps } = s.capabilityBoundingSet;
    const list = caps.map(setprivCap);
    setpriv.push(
      "--bounding-set",
      drop
        ? ["+all", ...list.map((c) => `-${c}`)].join(",")
        : ["-all", ...list.map((c) => `+${c}`)].join(","),
    );
  }
  if (s.noNewPrivileges) setpriv.push("--no-new-privs");
  const script = [
    "set -eu",
    // Every mount read-only, except the API file systems strict leaves writable.
    "findmnt -rn -o TARGET | while read -r mp; do",
    '  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac',
    '  mp=$(printf "%b" "$mp")',
    '  mount -o remount,bind,ro "$mp" 2>/dev/null || echo "unit-namespace: could not make $mp read-only" >&2',
    "done",
    ...writablePaths.map(
      (p) => `mount --bind ${shellQuote(p)} ${shellQuote(p)} && mount -o remount,bind,rw ${shellQuote(p)}`,
    ),
    ...tmpfs.map((p) => `mount -t tmpfs -o mode=1777 tmpfs ${shellQuote(p)}`),
    `exec ${setpriv.length > 0 ? `setpriv ${setpriv.map(shellQuote).join(" ")} -- ` : ""}"$@"`,
  ].join("\n");
  return {
    command: [
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "--",
      "/bin/sh",
      "-c",
      script,
      "unit-ns",
      ...argv,
    ],
    writablePaths,
  };
}
