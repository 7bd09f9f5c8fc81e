import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { describe, it } from "node:test";
import { REPO_ROOT } from "../helpers/paths.js";

/**
 * The module graph of src/ (type-only imports included: they tie modules together for readers and
 * for the compiler just as much) has no circles. A circle is how a layer starts to depend on the one
 * above it; biome.json's restricted imports keep the layers themselves apart (design.md).
 */

const SRC = join(REPO_ROOT, "src");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith(".ts") ? [path] : [];
  });
}

/** Relative imports and re-exports of each module, as repository paths of .ts files. */
export function importGraph(files: string[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    const deps: string[] = [];
    for (const match of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.[^"]+)"/g)) {
      deps.push(normalize(join(dirname(file), match[1]!.replace(/\.js$/, ".ts"))));
    }
    graph.set(file, deps);
  }
  return graph;
}

/**
 * What loading each module loads: its imports and re-exports that survive compilation (not `import
 * type`, `export type`, nor a list of `type` names only, which tsc erases), relative ones as repository
 * paths of .ts files, packages by name. Dynamic import() is left out: it loads only when it runs.
 */
export function runtimeImports(
  files: string[],
  read: (file: string) => string = (file) => readFileSync(file, "utf8"),
): Map<string, { modules: string[]; packages: string[] }> {
  const graph = new Map<string, { modules: string[]; packages: string[] }>();
  for (const file of files) {
    const text = read(file);
    const modules: string[] = [];
    const packages: string[] = [];
    const statements =
      /(?:^|\n)\s*(?:import|export)\b([^;]*?)\bfrom\s+"([^"]+)"|(?:^|\n)\s*import\s+"([^"]+)"/g;
    for (const match of text.matchAll(statements)) {
      const clause = (match[1] ?? "").trim();
      const names = /^\{([^}]*)\}$/
        .exec(clause)?.[1]
        ?.split(",")
        .map((n) => n.trim())
        .filter((n) => n !== "");
      const typesOnly = clause.startsWith("type ") || (names?.every((n) => n.startsWith("type ")) ?? false);
      if (typesOnly) continue;
      const specifier = match[2] ?? match[3]!;
      if (specifier.startsWith("."))
        modules.push(normalize(join(dirname(file), specifier.replace(/\.js$/, ".ts"))));
      else packages.push(specifier);
    }
    graph.set(file, { modules, packages });
  }
  return graph;
}

/** For each module that `bad` picks and one of `roots` loads, the chain of imports that leads to it. */
export function chainsTo(
  graph: Map<string, { modules: string[]; packages: string[] }>,
  roots: string[],
  bad: (file: string, imports: { modules: string[]; packages: string[] }) => boolean,
): string[][] {
  const from = new Map<string, string | undefined>(roots.map((r) => [r, undefined]));
  const queue = [...roots];
  const chains: string[][] = [];
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    const imports = graph.get(file);
    if (!imports) continue;
    if (bad(file, imports)) {
      const chain: string[] = [];
      for (let at: string | undefined = file; at !== undefined; at = from.get(at)) chain.unshift(at);
      chains.push(chain);
      continue;
    }
    for (const next of imports.modules) {
      if (from.has(next)) continue;
      from.set(next, file);
      queue.push(next);
    }
  }
  return chains;
}

/** Strongly connected components with more than one module (Tarjan). */
export function circles(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe("src/ import graph", () => {
  it("finds a circle when there is one (the check itself works)", () => {
    const graph = new Map([
      ["a.ts", ["b.ts"]],
      ["b.ts", ["c.ts"]],
      ["c.ts", ["a.ts"]],
      ["d.ts", ["a.ts"]],
    ]);
    assert.deepEqual(circles(graph), [["a.ts", "b.ts", "c.ts"]]);
  });

  it("finds zod behind a chain of imports, and not behind a type-only one (the check itself works)", () => {
    const texts: Record<string, string> = {
      "/m/cli.ts": 'import type { A } from "./types.js";\nimport { type B, c } from "./helper.js";\n',
      "/m/helper.ts": 'import { type S } from "./schemas-types.js";\nexport { d } from "./schemas.js";\n',
      "/m/schemas.ts": 'import { z } from "zod";\n',
      "/m/types.ts": 'import { z } from "zod";\n',
      "/m/schemas-types.ts": 'import "zod";\n',
    };
    const graph = runtimeImports(Object.keys(texts), (file) => texts[file]!);
    assert.deepEqual(graph.get("/m/schemas-types.ts")?.packages, ["zod"]);
    const found = chainsTo(graph, ["/m/cli.ts"], (_file, imports) => imports.packages.includes("zod"));
    assert.deepEqual(found, [["/m/cli.ts", "/m/helper.ts", "/m/schemas.ts"]]);
  });

  it("has no import circles", () => {
    const graph = importGraph(sources(SRC));
    assert.ok(graph.size > 100, `read ${graph.size} modules`);
    const found = circles(graph).map((c) => c.map((file) => relative(REPO_ROOT, file)));
    assert.deepEqual(found, [], `modules that import each other: ${JSON.stringify(found)}`);
  });

  it("the CLI loads neither zod nor protocol/index.ts to start, but for the MCP server that serves them", () => {
    // Each command's start-up was mostly zod and every method's schemas (issue 15); a command calls
    // through the wire descriptors (protocol/wire.ts) instead. `agentlab mcp` serves the schemas as
    // its tools: src/cli/mcp is imported by its handler, when it runs. test/unit/cli-start.test.ts
    // checks what real processes load; this names the import that brings zod in.
    const graph = runtimeImports(sources(SRC));
    const cli = [...graph.keys()].filter(
      (f) => f.startsWith(join(SRC, "cli")) && !f.startsWith(join(SRC, "cli", "mcp")),
    );
    assert.ok(cli.length > 40, `read ${cli.length} CLI modules`);
    const index = join(SRC, "protocol", "index.ts");
    const found = chainsTo(
      graph,
      cli,
      (file, imports) =>
        file === index || imports.packages.includes("zod") || file.startsWith(join(SRC, "daemon")),
    ).map((chain) => chain.map((file) => relative(REPO_ROOT, file)).join(" -> "));
    assert.deepEqual(
      found,
      [],
      `CLI modules that load zod, the protocol index or daemon code:\n${found.join("\n")}`,
    );
  });
});
