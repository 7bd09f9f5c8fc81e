import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DB_TIME_LENGTH, fromDbTime, toDbTime } from "../../src/daemon/store/time.js";

describe("store time: toDbTime", () => {
  it("writes UTC with a nine-digit fraction, always", () => {
    assert.equal(toDbTime(new Date("2026-02-14T13:26:17.898Z")), "2026-02-14T13:26:17.898000000Z");
    assert.equal(toDbTime(new Date("2026-02-14T13:26:17Z")), "2026-02-14T13:26:17.000000000Z");
    assert.equal(toDbTime(Date.UTC(2026, 1, 14, 13, 26, 17, 5)), "2026-02-14T13:26:17.005000000Z");
    assert.equal(toDbTime(new Date("2026-02-14T15:26:17.898+02:00")), "2026-02-14T13:26:17.898000000Z");
    assert.equal(toDbTime(0), "1970-01-01T00:00:00.000000000Z");
  });

  it("drops sub-millisecond parts of a number instead of rounding up", () => {
    assert.equal(toDbTime(1.9), "1970-01-01T00:00:00.001000000Z");
  });

  it("keeps the width fixed at the ends of the supported range", () => {
    const low = toDbTime(new Date("0000-01-01T00:00:00.000Z"));
    const high = toDbTime(new Date("9999-12-31T23:59:59.999Z"));
    assert.equal(low, "0000-01-01T00:00:00.000000000Z");
    assert.equal(high, "9999-12-31T23:59:59.999000000Z");
    assert.equal(low.length, DB_TIME_LENGTH);
    assert.equal(high.length, DB_TIME_LENGTH);
  });

  it("refuses invalid times and years that would break the width", () => {
    assert.throws(() => toDbTime(new Date("nope")), RangeError);
    assert.throws(() => toDbTime(Number.NaN), RangeError);
    assert.throws(() => toDbTime(new Date("+010000-01-01T00:00:00Z")), RangeError);
    assert.throws(() => toDbTime(new Date("-000001-01-01T00:00:00Z")), RangeError);
  });
});

describe("store time: fromDbTime", () => {
  it("reads the fixed-width form", () => {
    assert.equal(fromDbTime("2026-02-14T13:26:17.898000000Z").toISOString(), "2026-02-14T13:26:17.898Z");
  });

  it("reads plain RFC3339 with fewer fraction digits, truncating below a millisecond", () => {
    const cases: Array<[string, string]> = [
      ["2026-02-14T13:26:17Z", "2026-02-14T13:26:17.000Z"],
      ["2026-02-14T13:26:17.8Z", "2026-02-14T13:26:17.800Z"],
      ["2026-02-14T13:26:17.89Z", "2026-02-14T13:26:17.890Z"],
      ["2026-02-14T13:26:17.898002011Z", "2026-02-14T13:26:17.898Z"],
      ["2026-02-14T13:26:17.8989Z", "2026-02-14T13:26:17.898Z"],
      ["2026-02-14T15:26:17.5+02:00", "2026-02-14T13:26:17.500Z"],
      ["2026-02-14T08:56:17-04:30", "2026-02-14T13:26:17.000Z"],
      ["0050-06-01T00:00:00Z", "0050-06-01T00:00:00.000Z"],
    ];
    for (const [text, iso] of cases) assert.equal(fromDbTime(text).toISOString(), iso, text);
  });

  it("round-trips everything toDbTime writes", () => {
    for (let i = 0; i < 200; i++) {
      const ms = Math.floor(Math.random() * 4_102_444_800_000);
      assert.equal(fromDbTime(toDbTime(ms)).getTime(), ms);
    }
  });

  it("refuses text that is not a timestamp", () => {
    for (const bad of [
      "",
      "2026-02-14",
      "2026-02-14 13:26:17Z",
      "2026-02-14T13:26:17",
      "2026-02-14T13:26:17.Z",
      "2026-02-14T13:26:17.1234567890Z",
      "2026-02-30T13:26:17Z",
      "2026-13-01T00:00:00Z",
      "2026-02-14T24:00:00Z",
      "2026-02-14T13:60:00Z",
      "2026-02-14T13:26:60Z",
      "2026-02-14T13:26:17+25:00",
      " 2026-02-14T13:26:17Z",
    ]) {
      assert.throws(() => fromDbTime(bad), RangeError, bad);
    }
  });
});

describe("store time: lexical order is chronological order", () => {
  const sortsLikeTime = (times: number[]) => {
    const byText = times.map((t) => toDbTime(t)).sort();
    const byTime = [...times].sort((a, b) => a - b).map((t) => toDbTime(t));
    assert.deepEqual(byText, byTime);
  };

  it("across fraction, second, minute, day and year boundaries", () => {
    const boundaries = [
      "2026-02-14T13:26:17.000Z",
      "2026-02-14T13:26:17.001Z",
      "2026-02-14T13:26:17.009Z",
      "2026-02-14T13:26:17.010Z",
      "2026-02-14T13:26:17.099Z",
      "2026-02-14T13:26:17.100Z",
      "2026-02-14T13:26:17.500Z",
      "2026-02-14T13:26:17.999Z",
      "2026-02-14T13:26:18.000Z",
      "2026-02-14T13:26:59.999Z",
      "2026-02-14T13:27:00.000Z",
      "2026-02-14T23:59:59.999Z",
      "2026-02-15T00:00:00.000Z",
      "2026-12-31T23:59:59.999Z",
      "2027-01-01T00:00:00.000Z",
      "1999-12-31T23:59:59.999Z",
      "2000-01-01T00:00:00.000Z",
    ].map((s) => Date.parse(s));
    // Shuffled by a fixed permutation so the input order is not already sorted.
    const shuffled = boundaries
      .map((t, i) => ({ t, k: (i * 7) % boundaries.length }))
      .sort((a, b) => a.k - b.k);
    sortsLikeTime(shuffled.map((x) => x.t));
  });

  it("for random times", () => {
    const times = Array.from({ length: 1000 }, () => Math.floor(Math.random() * 4_102_444_800_000));
    sortsLikeTime(times);
  });

  it("which trimmed RFC3339 does not guarantee (why the width is fixed)", () => {
    const earlier = "2026-02-14T13:26:17Z";
    const later = "2026-02-14T13:26:17.5Z";
    assert.ok(fromDbTime(earlier) < fromDbTime(later));
    assert.ok(earlier > later, "trimmed forms sort the wrong way");
    assert.ok(toDbTime(fromDbTime(earlier)) < toDbTime(fromDbTime(later)));
  });
});
