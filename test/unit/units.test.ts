import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  formatDuration,
  parseDuration,
  parseMemoryMb,
  parseSizeGb,
  parseTtlMinutes,
} from "../../src/protocol/units.js";

describe("units: parseDuration", () => {
  it("reads Go-style durations into milliseconds", () => {
    const cases: [string, number][] = [
      ["250ms", 250],
      ["30s", 30_000],
      ["5m", 300_000],
      ["2h", 7_200_000],
      ["1d", 86_400_000],
      ["1h30m", 5_400_000],
      ["1m30s500ms", 90_500],
      ["1.5h", 5_400_000],
      ["0", 0],
      ["0s", 0],
      [" 10s ", 10_000],
    ];
    for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
  });

  it("refuses bare numbers, unknown units, signs, spaces and empty input", () => {
    for (const text of ["5", "5x", "-5m", "+5m", "1h 30m", "m", "abc", "1.5"]) {
      assert.throws(
        () => parseDuration(text),
        /^Error: expected a duration such as 30s, 5m or 1h30m, got "/,
        text,
      );
    }
    assert.throws(
      () => parseDuration(""),
      /expected a duration such as 30s, 5m or 1h30m, got an empty value/,
    );
    assert.throws(() => parseDuration("   "), /got an empty value/);
  });
});

describe("units: formatDuration", () => {
  it("writes the shortest form parseDuration reads back", () => {
    assert.equal(formatDuration(0), "0s");
    assert.equal(formatDuration(250), "250ms");
    assert.equal(formatDuration(90_000), "1m30s");
    assert.equal(formatDuration(3_600_000), "1h");
    assert.equal(formatDuration(90_061_000), "1d1h1m1s");
    for (const ms of [1000, 59_000, 600_000, 7_200_000, 90_061_000])
      assert.equal(parseDuration(formatDuration(ms)), ms);
  });
});

describe("units: parseTtlMinutes", () => {
  it("reads whole minutes or a duration", () => {
    assert.equal(parseTtlMinutes("90"), 90);
    assert.equal(parseTtlMinutes(" 45 "), 45);
    assert.equal(parseTtlMinutes("2h"), 120);
    assert.equal(parseTtlMinutes("1h30m"), 90);
    assert.equal(parseTtlMinutes("1.5h"), 90);
  });

  it("rounds a duration up to whole minutes", () => {
    assert.equal(parseTtlMinutes("60s"), 1);
    assert.equal(parseTtlMinutes("61s"), 2);
    assert.equal(parseTtlMinutes("90s"), 2);
    assert.equal(parseTtlMinutes("1ms"), 1);
  });

  it("refuses zero and negative values with the spec's wording", () => {
    for (const text of ["0", "-5", "-5m", "0s", "0m", "00"]) {
      assert.throws(() => parseTtlMinutes(text), { message: "ttl must be positive" }, text);
    }
  });

  it("reports a malformed duration as such", () => {
    assert.throws(() => parseTtlMinutes("soon"), /expected a duration/);
    assert.throws(() => parseTtlMinutes("5x"), /expected a duration/);
  });
});

describe("units: parseMemoryMb", () => {
  it("reads MiB, or a size with a binary unit in any of its spellings", () => {
    const cases: [string, number][] = [
      ["8192", 8192],
      [" 512 ", 512],
      ["512M", 512],
      ["512MB", 512],
      ["512MiB", 512],
      ["512m", 512],
      ["8G", 8192],
      ["8GB", 8192],
      ["8GiB", 8192],
      ["8g", 8192],
      ["8 GiB", 8192],
      ["1.5G", 1536],
      ["0.5g", 512],
      ["1T", 1_048_576],
      ["2048K", 2],
      ["2048KiB", 2],
    ];
    for (const [text, mb] of cases) assert.equal(parseMemoryMb(text), mb, text);
  });

  it("refuses zero and negative sizes", () => {
    for (const text of ["0", "0G", "-1", "-8G", "0.0M"]) {
      assert.throws(() => parseMemoryMb(text), { message: "memory must be positive" }, text);
    }
  });

  it("refuses sizes that are not a whole number of MiB", () => {
    assert.throws(
      () => parseMemoryMb("1.5M"),
      /^Error: memory must be a whole number of MiB: "1.5M" is 1.5 MiB$/,
    );
    assert.throws(() => parseMemoryMb("100K"), /whole number of MiB/);
  });

  it("refuses unknown units and malformed input, naming the accepted forms", () => {
    for (const text of ["", "8X", "8GG", "G", "eight", "8 G B", "8Gi", "1e3", "8,5G", "+8G"]) {
      assert.throws(
        () => parseMemoryMb(text),
        /^Error: expected a memory size such as 8192, 512M, 8G or 8GiB, got "/,
        text,
      );
    }
  });
});

describe("units: parseSizeGb", () => {
  it("reads GiB, or G/T in any spelling, as Proxmox sizes disks", () => {
    const cases: [string, number][] = [
      ["80", 80],
      ["80G", 80],
      ["80GB", 80],
      ["80GiB", 80],
      [" 80 g ", 80],
      ["1T", 1024],
      ["1.5T", 1536],
    ];
    for (const [text, gb] of cases) assert.equal(parseSizeGb(text), gb, text);
  });

  it("refuses zero, negative, fractional and unknown sizes with the accepted forms", () => {
    for (const text of ["0", "0G", "-8G"])
      assert.throws(() => parseSizeGb(text), { message: "size must be positive" });
    assert.throws(
      () => parseSizeGb("1.5G"),
      /^Error: size must be a whole number of GiB: "1.5G" is 1.5 GiB$/,
    );
    for (const text of ["", "80M", "eighty", "80X", "G"]) {
      assert.throws(
        () => parseSizeGb(text),
        /^Error: expected a disk size such as 80G, 80 or 1T, got "/,
        text,
      );
    }
  });
});
