/** The fake `pvesh`: the API through the same route table, as root@pam, with pvesh's output formats. */
import { type Io, localNode, parseArgs, reportError, rootCall, specOf, waitForTask } from "./cli-common.js";
import { PveError } from "./errors.js";
import { canonicalJson, perlPrettyJson, pveshText } from "./format.js";
import { matchRoute } from "./routes.js";

const VERBS: Record<string, string> = { get: "GET", create: "POST", set: "PUT", delete: "DELETE", ls: "GET" };
const FORMATS = ["text", "json", "json-pretty", "yaml"];
const FORMAT_FLAGS = new Set(["noborder", "noheader", "quiet", "human-readable"]);

const USAGE = "USAGE: pvesh <get|set|create|delete|ls> <api_path> [OPTIONS] [FORMAT_OPTIONS]";

function render(data: unknown, format: string): string {
  if (format === "json") return `${canonicalJson(data)}\n`;
  if (format === "json-pretty") return `${perlPrettyJson(data)}\n`;
  const text = pveshText(data);
  return text === "" ? "" : `${text}\n`;
}

export async function pveshMain(dir: string, argv: string[], io: Io): Promise<number> {
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
    const node = await localNode(dir);
    const result = await rootCall(dir, { method, path, params, localNode: node });
    if (result.task) {
      // pvesh runs the worker in the foreground, prints its log, then the UPID; it never checks the result.
      const task = await waitForTask(dir, result.task.upid, io);
      if (task.exitstatus !== "OK" && !task.exitstatus?.startsWith("WARNINGS"))
        io.err(`${task.exitstatus}\n`);
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
