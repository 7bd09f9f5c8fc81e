import type Database from "better-sqlite3";

/**
 * The UPDATE statements of a repository's `update(patch)`: one prepared statement per set of changed
 * columns, made on first use. Each sets those columns from same-named parameters plus `updated_at`,
 * keyed by `key = @key`; with `cas`, only when `casClause` holds too (a compare-and-set).
 */
export function patchStatements<Row>(
  db: Database.Database,
  options: { table: string; key: string; returning: string; casClause: string },
): (columns: readonly string[], cas: boolean) => Database.Statement<Record<string, unknown>, Row> {
  const cache = new Map<string, Database.Statement<Record<string, unknown>, Row>>();
  return (columns, cas) => {
    const cacheKey = `${columns.join(",")}|${cas}`;
    let stmt = cache.get(cacheKey);
    if (!stmt) {
      const sets = [...columns.map((c) => `${c} = @${c}`), "updated_at = @updated_at"].join(", ");
      stmt = db.prepare<Record<string, unknown>, Row>(
        `UPDATE ${options.table} SET ${sets} WHERE ${options.key} = @${options.key}${cas ? ` AND ${options.casClause}` : ""} RETURNING ${options.returning}`,
      );
      cache.set(cacheKey, stmt);
    }
    return stmt;
  };
}
