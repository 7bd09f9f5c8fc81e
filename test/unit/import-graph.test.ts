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

  it("has no import circles", () => {
    const graph = importGraph(sources(SRC));
    assert.ok(graph.size > 100, `read ${graph.size} modules`);
    const found = circles(graph).map((c) => c.map((file) => relative(REPO_ROOT, file)));
    assert.deepEqual(found, [], `modules that import each other: ${JSON.stringify(found)}`);
  });
});
