import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { z } from "zod";
import { describeIssues } from "../../src/daemon/rpc/server.js";
import {
  jobRun,
  LIMITS,
  METHODS,
  preview,
  RECORD_LIMITS,
  sandboxCreate,
  sandboxExec,
  sandboxValidate,
} from "../../src/protocol/index.js";

interface Def {
  type: string;
  checks?: { _zod: { def: { check: string } } }[];
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  element?: z.ZodType;
  options?: z.ZodType[];
  in?: z.ZodType;
  out?: z.ZodType;
  keyType?: z.ZodType;
  valueType?: z.ZodType;
}

function defOf(schema: z.ZodType): Def {
  return (schema as unknown as { _zod: { def: Def } })._zod.def;
}

function hasCheck(def: Def, check: string): boolean {
  return (def.checks ?? []).some((c) => c._zod.def.check === check);
}

/**
 * Every place in a params schema where a client could send something unbounded: a string without a
 * maximum length, an array without a maximum count, a number without a maximum, a record without an
 * entry bound, or a kind of schema this walk does not know (so a new kind is looked at, not waved through).
 */
function unbounded(schema: z.ZodType, path: string): string[] {
  const def = defOf(schema);
  switch (def.type) {
    case "string":
      return hasCheck(def, "max_length") ? [] : [`${path}: string without a maximum length`];
    case "number":
      return hasCheck(def, "less_than") ? [] : [`${path}: number without a maximum`];
    case "array":
      return [
        ...(hasCheck(def, "max_length") ? [] : [`${path}: array without a maximum count`]),
        ...unbounded(def.element!, `${path}[]`),
      ];
    case "record":
      return [
        ...(RECORD_LIMITS.has(schema) ? [] : [`${path}: record without an entry bound`]),
        ...unbounded(def.keyType!, `${path}{key}`),
        ...unbounded(def.valueType!, `${path}{value}`),
      ];
    case "object":
      return Object.entries(def.shape!).flatMap(([key, field]) =>
        unbounded(field, path ? `${path}.${key}` : key),
      );
    case "optional":
    case "nullable":
    case "default":
    case "prefault":
    case "readonly":
      return unbounded(def.innerType!, path);
    case "pipe":
      return [...unbounded(def.in!, path), ...unbounded(def.out!, path)];
    case "union":
      return def.options!.flatMap((option) => unbounded(option, path));
    case "boolean":
    case "enum":
    case "literal":
      return [];
    default:
      return [`${path}: a ${def.type} schema this test does not know how to bound`];
  }
}

describe("every RPC input is bounded", () => {
  test("no method's params have a string, array, number or record without a limit", () => {
    const problems = METHODS.flatMap((method) =>
      unbounded(method.params, "").map((problem) => `${method.method} ${problem}`),
    );
    assert.deepEqual(problems, []);
  });

  test("the walk itself finds an unbounded field (so the test above cannot pass by walking nothing)", async () => {
    const { z } = await import("zod");
    const loose = z.object({
      a: z.string(),
      b: z.array(z.number().max(3)).max(2),
      c: z.record(z.string().max(1), z.string().max(1)),
      d: z.number().int(),
    });
    assert.deepEqual(unbounded(loose, ""), [
      "a: string without a maximum length",
      "c: record without an entry bound",
      "d: number without a maximum",
    ]);
  });
});

function refusal(schema: z.ZodType, params: unknown): string {
  const parsed = schema.safeParse(params);
  assert.equal(parsed.success, false, "refused");
  return describeIssues((parsed as { error: z.ZodError }).error);
}

describe("an over-limit field is named with its size and the limit, and never echoed", () => {
  const huge = "a".repeat(1024 * 1024);

  test("a 1 MB task", () => {
    const message = refusal(jobRun.params, {
      repo_url: "https://example.com/r.git",
      task: huge,
      profile: "yolo-ephemeral",
    });
    assert.equal(message, `task is 1048576 characters; the limit is ${LIMITS.TASK.max}`);
  });

  test("a 1 MB profile name in sandbox.validate (issue 15's 2 MB answer)", () => {
    const message = refusal(sandboxValidate.params, { profile: huge });
    assert.equal(message, "profile is 1048576 characters; the limit is 64");
  });

  test("a 1 MB sandbox name is refused by its length, before the DNS-name pattern runs", () => {
    const message = refusal(sandboxCreate.params, { profile: "p", name: `${huge}!` });
    assert.equal(message, "name is 1048577 characters; the limit is 63");
  });

  test("too many tags, and too many exec environment variables", () => {
    const tags = Array.from({ length: 10_000 }, () => "t");
    assert.equal(
      refusal(sandboxCreate.params, { profile: "p", tags }),
      "tags has 10000 items; the limit is 16",
    );
    const env = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`V${i}`, "x"]));
    assert.equal(
      refusal(sandboxExec.params, { vmid: 100, command: ["true"], env }),
      "env has 300 entries; the limit is 256",
    );
  });

  test("a number past its limit", () => {
    assert.equal(
      refusal(sandboxCreate.params, { profile: "p", ttl_minutes: 10 ** 12 }),
      `ttl_minutes is 1000000000000; the limit is ${LIMITS.TTL_MINUTES.max}`,
    );
  });

  test("unknown keys are quoted shortened, and a flood of them is summed up", () => {
    const keys = Object.fromEntries(
      Array.from({ length: 1000 }, (_, i) => [`${i}${huge.slice(0, 10_000)}`, 1]),
    );
    const message = refusal(sandboxValidate.params, { profile: "p", ...keys });
    assert.ok(message.length < 1000, `short: ${message.length} characters`);
    assert.match(message, /^\(params\): unknown keys "0a{63}…", .* and 995 more$/);
  });

  test("many bad fields produce a few issues and a count", () => {
    const message = refusal(sandboxExec.params, {
      vmid: 100,
      command: Array.from({ length: 100 }, () => huge.slice(0, 70_000)),
    });
    assert.ok(message.length < 1000, `short: ${message.length} characters`);
    assert.match(message, /^command\.0 is 70000 characters; the limit is 65536; .*; and 95 more$/);
  });

  test("preview keeps the first 64 characters", () => {
    assert.equal(preview("short"), "short");
    assert.equal(preview(huge), `${"a".repeat(64)}…`);
  });
});
