/** The fake `pvesh`: the API through the same route table, as root@pam, with pvesh's output formats. */
import { countCallFault } from "./call-faults.js";
import { beginCall } from "./call-log.js";
import { type Io, localNode, parseArgs, reportError, rootCall, specOf, waitForTask } from "./cli-common.js";
import { PveError } from "./errors.js";
import { canonicalJson, perlPrettyJson, pveshText } from "./format.js";
import { isProxied, proxiedOutcome } from "./pvesh-proxy.js";
import { type Match, matchRoute } from "./routes.js";
import { withModel } from "./runner.js";
import { type RawParams, validate } from "./schema.js";

const VERBS: Record<string, string> = { get: "GET", create: "POST", set: "PUT", delete: "DELETE", ls: "GET" };
const FORMATS = ["text", "json", "json-pretty", "yaml"];
const FORMAT_FLAGS = new Set(["noborder", "noheader", "quiet", "human-readable"]);

const USAGE = "USAGE: pvesh <get|set|create|delete|ls> <api_path> [OPTIONS] [FORMAT_OPTIONS]";

/** The node pvesh would proxy this call to, or undefined when it runs here. */
async function proxyTarget(dir: string, match: Match, here: string): Promise<string | undefined> {
  const node = match.pathParams["node"];
  if (node === undefined || node === here || node === "localhost" || !isProxied(match.route))
    return undefined;
  // An unknown node is left to the handler's own refusal (real pvesh fails resolving its address).
  const known = await withModel(dir, (ctx) => ctx.state.nodes.some((n) => n.name === node));
  return known ? node : undefined;
}

/**
 * proxy_handler (pvesh.pm:111-144): the call runs as `pvesh --noproxy <cmd> <path> --output-format json
 * <args>` on `target` (the SSH hop is the only thing not modelled), and its output is read back the way
 * run_command and decode_json read it.
 */
async function proxy(
  dir: string,
  target: string,
  verb: string,
  path: string,
  params: RawParams,
  format: string,
  io: Io,
): Promise<number> {
  const args: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) args.push(`--${key}`, v);
  }
  let stdout = "";
  let stderr = "";
  const seen: { returnsNull?: boolean } = {};
  const code = await pveshMain(
    dir,
    ["--noproxy", verb, path, "--output-format", "json", ...args],
    { out: (text) => (stdout += text), err: (text) => (stderr += text) },
    target,
    seen,
  );
  const outcome = proxiedOutcome({ code, stdout, stderr, returnsNull: seen.returnsNull === true });
  for (const line of outcome.stderr) io.err(`${line}\n`);
  if (!outcome.ok) throw new Error(outcome.error);
  // print_api_result prints nothing for a `null` return type (pve-common CLIFormatter.pm:373-374).
  if (!outcome.returnsNull) io.out(render(outcome.data, format));
  return 0;
}

function render(data: unknown, format: string): string {
  if (format === "json") return `${canonicalJson(data)}\n`;
  if (format === "json-pretty") return `${perlPrettyJson(data)}\n`;
  const text = pveshText(data);
  return text === "" ? "" : `${text}\n`;
}

/**
 * One pvesh run. `here` is the node it runs on (PVESIM_NODE, else the first node); `seen` learns whether
 * the handler's result is `null`, which a proxying pvesh needs to print as the real one does.
 */
export async function pveshMain(
  dir: string,
  argvIn: string[],
  io: Io,
  here?: string,
  seen: { returnsNull?: boolean } = {},
): Promise<number> {
  // The call log counts what the caller ran: a proxying pvesh's inner `--noproxy` run is the same call.
  if (argvIn[0] === "--noproxy") return pveshRun(dir, argvIn, io, here, seen);
  const method = VERBS[argvIn[0] ?? ""] ?? argvIn[0] ?? "?";
  const rest = argvIn.slice(1);
  const path = rest.find((a) => a.startsWith("/")) ?? rest.find((a) => !a.startsWith("-")) ?? "/";
  const call = await beginCall(dir, "pvesh", method, `/${path.replace(/^\/+|\/+$/g, "")}`);
  try {
    // An internal error of the handler (a plain `die`): pvesh prints the message and exits 255. An
    // `api_down` fault has no pvesh form (pvesh does not go through pveproxy) and is left unused.
    const internal = call.faults.find((f) => f.name === "http500");
    if (internal) {
      await countCallFault(dir, internal);
      return reportError(new PveError(500, internal.args["message"] || "simulated internal error"), io);
    }
    return await pveshRun(dir, argvIn, io, here, seen);
  } finally {
    await call.end();
  }
}

async function pveshRun(
  dir: string,
  argvIn: string[],
  io: Io,
  here?: string,
  seen: { returnsNull?: boolean } = {},
): Promise<number> {
  // `pvesh --noproxy …` is how a proxying pvesh runs the call on the other node (pvesh.pm:31-33).
  const noproxy = argvIn[0] === "--noproxy";
  const argv = noproxy ? argvIn.slice(1) : argvIn;
  const verb = argv[0];
  if (!verb || !(verb in VERBS)) {
    io.err(verb ? `unknown command 'pvesh ${verb}'\n${USAGE}\n` : `${USAGE}\n`);
    return 255;
  }
  const method = VERBS[verb]!;
  try {
    const rest = argv.slice(1);
    const pathArg = rest.find((a) => a.startsWith("/")) ?? rest.find((a) => !a.startsWith("-"));
    const path = pathArg ? `/${pathArg.replace(/^\/+|\/+$/g, "")}` : undefined;
    if (!path)
      throw new PveError(400, "Parameter verification failed.", {
        errors: { api_path: "property is missing and it is not optional" },
      });
    const match = matchRoute(method, path);
    if (!match) {
      io.err(`no '${verb}' handler for '${path}'\n`);
      return 255;
    }
    const args = rest.filter((a) => a !== pathArg);
    const parsed = parseArgs(args, (key) =>
      FORMAT_FLAGS.has(key)
        ? { type: "boolean" }
        : key === "output-format"
          ? { type: "string" }
          : specOf(match.route, key),
    );
    if (parsed.positional.length > 0) throw new PveError(400, `too many arguments`);
    const format = String(parsed.options["output-format"] ?? "text");
    if (!FORMATS.includes(format)) {
      throw new PveError(400, "Parameter verification failed.", {
        errors: {
          "output-format": `value '${format}' does not have a value in the enumeration '${FORMATS.join(", ")}'`,
        },
      });
    }
    if (format === "yaml")
      throw new PveError(500, "output format 'yaml' is not implemented by the simulator");
    const params = { ...parsed.options };
    for (const key of ["output-format", ...FORMAT_FLAGS]) delete params[key];
    const node = here ?? (await localNode(dir));
    const target = verb === "ls" ? undefined : await proxyTarget(dir, match, node);
    if (target !== undefined) {
      if (noproxy) throw new Error("proxy loop detected - aborting"); // pvesh.pm:102
      // pvesh verifies the parameters against the handler's schema before it proxies (pvesh.pm:238).
      validate(
        { params: match.route.params, additional: match.route.additional },
        {
          ...params,
          ...match.pathParams,
        },
      );
      return await proxy(dir, target, verb, path, params, format, io);
    }
    const result = await rootCall(dir, { method, path, params, localNode: node });
    seen.returnsNull = !result.task && (result.data === null || result.data === undefined);
    if (result.task) {
      // pvesh runs the worker in the foreground, prints its log, then the UPID; it never checks the result.
      // tee_worker reads the worker's end from its control pipe: TASK OK is not printed, the error text
      // of TASK ERROR and a warning count go to stderr (pve-common RESTEnvironment.pm:489-501).
      const task = await waitForTask(dir, result.task.upid, io);
      const warnings = /^WARNINGS: (\d+)$/.exec(task.exitstatus ?? "");
      if (warnings) io.err(`Task finished with ${warnings[1]} warning(s)!\n`);
      else if (task.exitstatus !== "OK") io.err(`${task.exitstatus}\n`);
      io.out(format === "text" ? `${result.task.upid}\n` : render(result.task.upid, format));
      return 0;
    }
    for (const w of result.warnings ?? []) io.err(`${w}\n`);
    if (result.messages?.length) {
      for (const m of result.messages) io.out(`${m}\n`);
      return 0;
    }
    if (verb === "ls" && Array.isArray(result.data)) {
      for (const entry of result.data as Array<Record<string, unknown>>) {
        const name =
          entry["subdir"] ??
          entry["name"] ??
          entry["node"] ??
          entry["vmid"] ??
          entry["storage"] ??
          entry["volid"];
        io.out(`dr--d        ${String(name)}\n`);
      }
      return 0;
    }
    if (result.data !== null && result.data !== undefined) io.out(render(result.data, format));
    return 0;
  } catch (err) {
    return reportError(err, io, USAGE);
  }
}
