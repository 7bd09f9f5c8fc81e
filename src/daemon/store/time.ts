/**
 * Timestamps as the database stores them: TEXT, UTC, always `YYYY-MM-DDTHH:MM:SS.fffffffffZ`.
 *
 * The width is fixed (nine fraction digits, never trimmed) because queries compare these strings
 * directly (`lease_expires_at <= ?`, `ORDER BY ts`): with trimmed RFC3339, "…17Z" sorts after
 * "…17.5Z" and lease expiry fires at the wrong time. Reads also accept plain RFC3339 with fewer
 * fraction digits or an offset, which is what upstream wrote before its fixed-width migration.
 */

/** Length of every timestamp toDbTime produces; the schema checks it. */
export const DB_TIME_LENGTH = 30;

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * Format a time for storage. A number is epoch milliseconds; anything below a millisecond is dropped
 * because a Date read back could not carry it anyway.
 */
export function toDbTime(value: Date | number): string {
  const ms = typeof value === "number" ? value : value.getTime();
  if (!Number.isFinite(ms)) throw new RangeError(`cannot store an invalid time: ${String(value)}`);
  const date = new Date(Math.floor(ms));
  const year = date.getUTCFullYear();
  // Outside 0000..9999 toISOString switches to a signed six-digit year and the fixed width breaks.
  if (year < 0 || year > 9999) throw new RangeError(`cannot store a time outside years 0000-9999: ${ms}`);
  return `${date.toISOString().slice(0, 23)}000000Z`;
}

/** Parse a stored timestamp (fixed-width or plain RFC3339). Precision beyond milliseconds is truncated. */
export function fromDbTime(text: string): Date {
  const match = RFC3339.exec(text);
  if (!match) throw new RangeError(`not a stored timestamp: ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac, , sign, oh, om] = match;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = Number(h);
  const minute = Number(mi);
  const second = Number(s);
  const millis = Number((frac ?? "").padEnd(3, "0").slice(0, 3));
  const date = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0..99 to 1900..1999.
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, millis);
  // Date rolls 2026-02-30 over to March; a stored value like that is damage, not a date.
  if (
    date.getUTCFullYear() !== year ||
    date.getUTCMonth() !== month - 1 ||
    date.getUTCDate() !== day ||
    date.getUTCHours() !== hour ||
    date.getUTCMinutes() !== minute ||
    date.getUTCSeconds() !== second
  ) {
    throw new RangeError(`not a valid timestamp: ${JSON.stringify(text)}`);
  }
  if (sign !== undefined) {
    const offsetHours = Number(oh);
    const offsetMinutes = Number(om);
    if (offsetHours > 23 || offsetMinutes > 59) {
      throw new RangeError(`not a valid timestamp offset: ${JSON.stringify(text)}`);
    }
    const offsetMs = (offsetHours * 60 + offsetMinutes) * 60_000;
    return new Date(date.getTime() + (sign === "+" ? -offsetMs : offsetMs));
  }
  return date;
}

/** fromDbTime for nullable columns. */
export function fromDbTimeOrNull(text: string | null): Date | null {
  return text === null ? null : fromDbTime(text);
}

/** toDbTime for nullable columns. */
export function toDbTimeOrNull(value: Date | number | null | undefined): string | null {
  return value === null || value === undefined ? null : toDbTime(value);
}
