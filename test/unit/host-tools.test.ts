/**
 * The host tools against real programs on real image files (blkid, mkfs.ext4, e2fsck, partx), and
 * against small fake lvs/lvchange/zfs/e2fsck scripts placed first in PATH, the way the simulator
 * provides them.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ExecaHostTools,
  FSCK_OUTPUT_LIMIT,
  renderCommand,
  resolveProgram,
} from "../../src/daemon/host/host-tools.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

// e2fsprogs and util-linux live in /usr/sbin, which a non-root PATH may lack.
const SYSTEM_PATH = [process.env["PATH"] ?? "", "/usr/sbin", "/sbin"].filter(Boolean).join(delimiter);

let root = "";
before(() => {
  root = mkdtempSync(join(tmpdir(), "agentlab-host-tools-"));
});
after(() => rmSync(root, { recursive: true, force: true }));

function sparseFile(name: string, mib: number): string {
  const path = join(root, name);
  writeFileSync(path, "");
  execFileSync("truncate", ["-s", `${mib}M`, path]);
  return path;
}

/** A directory of executable scripts, put first in PATH; each logs its argv to calls.log. */
function fakeBin(scripts: Record<string, string>): {
  env: NodeJS.ProcessEnv;
  dir: string;
  calls(): string[];
} {
  const dir = mkdtempSync(join(root, "bin-"));
  for (const [name, body] of Object.entries(scripts)) {
    const path = join(dir, name);
    writeFileSync(path, `#!/bin/sh\necho "${name} $*" >> "${dir}/calls.log"\n${body}\n`);
    chmodSync(path, 0o755);
  }
  return {
    dir,
    env: { ...process.env, PATH: `${dir}${delimiter}${SYSTEM_PATH}`, FAKE_DIR: dir },
    calls: () => {
      try {
        return readFileSync(join(dir, "calls.log"), "utf8").trim().split("\n").filter(Boolean);
      } catch {
        return [];
      }
    },
  };
}

const tools = new ExecaHostTools({ env: { ...process.env, PATH: SYSTEM_PATH } });

describe("blkid", () => {
  test("reads type and label of a fresh workspace filesystem made by mkfsExt4", async () => {
    const image = sparseFile("ws.img", 32);
    await tools.mkfsExt4(image, "AGENTLAB_WORK");
    const found = await tools.blkid(image);
    assert.ok(typeof found === "object");
    assert.equal(found.type, "ext4");
    assert.equal(found.label, "AGENTLAB_WORK");
    assert.equal(found.ptType, undefined);
    assert.match(found.uuid ?? "", /^[0-9a-f-]{36}$/);
    // -m 0: no blocks reserved for root on a data-only disk.
    const dump = execFileSync("dumpe2fs", ["-h", image], {
      env: { ...process.env, PATH: SYSTEM_PATH },
      stdio: ["ignore", "pipe", "ignore"],
    }).toString();
    assert.match(dump, /^Reserved block count:\s+0$/m);
  });

  test("says none for a never-formatted (all-zero) volume", async () => {
    assert.equal(await tools.blkid(sparseFile("zero.img", 8)), "none");
  });

  test("reports another signature's type (swap)", async () => {
    const image = sparseFile("swap.img", 8);
    execFileSync("mkswap", [image], { env: { ...process.env, PATH: SYSTEM_PATH }, stdio: "ignore" });
    const found = await tools.blkid(image);
    assert.ok(typeof found === "object");
    assert.equal(found.type, "swap");
  });

  test("a missing path is NOT_FOUND, not 'never formatted'", async () => {
    await assert.rejects(tools.blkid(join(root, "absent.img")), (error: AgentlabError) => {
      assert.equal(error.code, "NOT_FOUND");
      assert.match(error.message, /absent\.img does not exist/);
      return true;
    });
  });

  test("a relative path is refused before anything runs (it could read as an option)", async () => {
    await assert.rejects(tools.blkid("-h"), (error: AgentlabError) => error.code === "INVALID_PARAMS");
  });
});

describe("mkfsExt4", () => {
  test("refuses a label ext4 cannot hold, and leaves the volume untouched", async () => {
    const image = sparseFile("label.img", 8);
    await assert.rejects(tools.mkfsExt4(image, "A_LABEL_LONGER_THAN_16"), /must be 1 to 16 bytes/);
    assert.equal(await tools.blkid(image), "none");
  });

  test("a failing mkfs reports its own words", async () => {
    await assert.rejects(
      tools.mkfsExt4(join(root, "no-such-dir", "x.img"), "AGENTLAB_WORK"),
      (error: AgentlabError) => {
        assert.equal(error.code, "INTERNAL");
        assert.match(error.message, /^mkfs\.ext4 -F -q -L AGENTLAB_WORK -m 0 .* failed with exit status \d+/);
        return true;
      },
    );
  });
});

describe("e2fsck", () => {
  test("runs -f -n on a clean image: exit 0, its output and the command line", async () => {
    const image = sparseFile("clean.img", 16);
    await tools.mkfsExt4(image, "AGENTLAB_WORK");
    const ran = await tools.e2fsck(image, "check");
    assert.equal(ran.exitCode, 0);
    assert.equal(ran.command, `e2fsck -f -n ${image}`);
    assert.match(ran.output, /Pass 5: Checking group summary information/);
    assert.match(ran.output, /AGENTLAB_WORK: \d+\/\d+ files/);
  });

  test("an all-zero file is an operational error (exit 8), stdout and stderr both kept", async () => {
    const ran = await tools.e2fsck(sparseFile("zero-e2fsck.img", 8), "check");
    assert.equal(ran.exitCode, 8);
    assert.match(ran.output, /Bad magic number in super-block/);
    assert.match(ran.output, /e2fsck -b 32768 <device>/);
  });

  test("keeps only the last 64 KiB of a long output, and says how much it dropped", async () => {
    const fake = fakeBin({
      // 3000 lines of 40 bytes (120000 bytes), half on each stream, then exit 4.
      e2fsck: `i=0; while [ $i -lt 1500 ]; do printf '%039d\\n' $i; printf '%039d\\n' $i >&2; i=$((i+1)); done; echo THE-END; exit 4`,
    });
    const fakeTools = new ExecaHostTools({ env: fake.env });
    const ran = await fakeTools.e2fsck("/dev/fake0", "repair");
    assert.equal(ran.exitCode, 4);
    assert.equal(ran.command, "e2fsck -f -y /dev/fake0");
    assert.deepEqual(fake.calls(), ["e2fsck -f -y /dev/fake0"]);
    const [marker, ...rest] = ran.output.split("\n");
    assert.match(marker!, /^\[\d+ bytes of earlier output omitted\]$/);
    const kept = rest.join("\n");
    assert.ok(Buffer.byteLength(kept) <= FSCK_OUTPUT_LIMIT);
    assert.ok(Buffer.byteLength(kept) > FSCK_OUTPUT_LIMIT - 100);
    // The streams are separate pipes, so only "the end of stdout is in the kept part" is certain.
    assert.match(kept, /THE-END\n/);
    assert.equal(
      Number(/^\[(\d+)/.exec(marker!)![1]) + Buffer.byteLength(kept),
      3000 * 40 + "THE-END\n".length,
    );
  });

  test("cancelling a check stops e2fsck and rejects with CANCELLED", async () => {
    const fake = fakeBin({ e2fsck: "echo started; exec sleep 30" });
    const fakeTools = new ExecaHostTools({ env: fake.env });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(new Error("user pressed Ctrl-C")), 200);
    await assert.rejects(
      fakeTools.e2fsck("/dev/fake0", "check", controller.signal),
      (error: AgentlabError) => {
        assert.equal(error.code, "CANCELLED");
        return true;
      },
    );
    assert.ok(Date.now() - started < 10_000);
  });

  test("a missing e2fsck is HOST_TOOLS_UNAVAILABLE naming the package, and available() says false", async () => {
    const empty = mkdtempSync(join(root, "empty-"));
    const bare = new ExecaHostTools({ env: { ...process.env, PATH: empty } });
    assert.equal(await bare.available(), false);
    assert.equal(await tools.available(), true);
    await assert.rejects(bare.e2fsck("/dev/sdz", "check"), (error: AgentlabError) => {
      assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
      assert.equal(error.message, "e2fsck not found in PATH on this host");
      assert.match(error.hint, /apt install e2fsprogs/);
      return true;
    });
    await assert.rejects(bare.lvActive("pve", "vm-100-disk-0"), (error: AgentlabError) => {
      assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
      assert.match(error.hint, /apt install lvm2/);
      return true;
    });
  });
});

describe("LVM", () => {
  const lvm = () =>
    fakeBin({
      lvs: `[ "$3" = lv_active ] || exit 3
case "$4" in pve/vm-*) ;; *) echo "  Failed to find logical volume \\"$4\\"" >&2; exit 5;; esac
if [ -f "$FAKE_DIR/active" ]; then echo "  active"; else echo "  "; fi`,
      lvchange: `case "$1" in -ay) touch "$FAKE_DIR/active";; -an) rm -f "$FAKE_DIR/active";; *) exit 3;; esac`,
    });

  test("lvActive reads lvs; lvActivate runs lvchange -ay -K; lvDeactivate runs lvchange -an", async () => {
    const fake = lvm();
    const lvTools = new ExecaHostTools({ env: fake.env });
    assert.equal(await lvTools.lvActive("pve", "vm-105-disk-0"), false);
    await lvTools.lvActivate("pve", "vm-105-disk-0");
    assert.equal(await lvTools.lvActive("pve", "vm-105-disk-0"), true);
    await lvTools.lvDeactivate("pve", "vm-105-disk-0");
    assert.equal(await lvTools.lvActive("pve", "vm-105-disk-0"), false);
    assert.deepEqual(fake.calls(), [
      "lvs --noheadings -o lv_active pve/vm-105-disk-0",
      "lvchange -ay -K pve/vm-105-disk-0",
      "lvs --noheadings -o lv_active pve/vm-105-disk-0",
      "lvchange -an pve/vm-105-disk-0",
      "lvs --noheadings -o lv_active pve/vm-105-disk-0",
    ]);
  });

  test("a missing LV fails with lvs's own message", async () => {
    const lvTools = new ExecaHostTools({ env: lvm().env });
    await assert.rejects(lvTools.lvActive("data", "thing"), (error: AgentlabError) => {
      assert.equal(error.code, "INTERNAL");
      assert.equal(
        error.message,
        'lvs --noheadings -o lv_active data/thing failed with exit status 5: Failed to find logical volume "data/thing"',
      );
      assert.match(error.hint, /lvs data/);
      return true;
    });
  });

  test("names that LVM would not accept, or that read as options, run nothing", async () => {
    const fake = lvm();
    const lvTools = new ExecaHostTools({ env: fake.env });
    await assert.rejects(
      lvTools.lvActivate("-ff", "x"),
      (error: AgentlabError) => error.code === "INVALID_PARAMS",
    );
    await assert.rejects(
      lvTools.lvDeactivate("pve", "a b"),
      (error: AgentlabError) => error.code === "INVALID_PARAMS",
    );
    assert.deepEqual(fake.calls(), []);
  });
});

describe("zfsClone", () => {
  test("runs zfs clone origin target, and reports zfs's refusal", async () => {
    const fake = fakeBin({
      zfs: `if [ -e "$FAKE_DIR/exists" ]; then echo "cannot create '$3': dataset already exists" >&2; exit 1; fi; touch "$FAKE_DIR/exists"`,
    });
    const zfsTools = new ExecaHostTools({ env: fake.env });
    await zfsTools.zfsClone("rpool/data/vm-200-disk-0@agentlab-fork-201", "rpool/data/vm-201-disk-0");
    assert.deepEqual(fake.calls(), [
      "zfs clone rpool/data/vm-200-disk-0@agentlab-fork-201 rpool/data/vm-201-disk-0",
    ]);
    await assert.rejects(
      zfsTools.zfsClone("rpool/data/vm-200-disk-0@agentlab-fork-201", "rpool/data/vm-201-disk-0"),
      (error: AgentlabError) => {
        assert.match(error.message, /cannot create 'rpool\/data\/vm-201-disk-0': dataset already exists$/);
        return true;
      },
    );
  });

  test("an origin without exactly one @snapshot is refused before zfs runs", async () => {
    const fake = fakeBin({ zfs: "exit 0" });
    const zfsTools = new ExecaHostTools({ env: fake.env });
    for (const origin of ["rpool/data/vm-200-disk-0", "a@b@c", "@snap", "rpool/x@", "-r@x"]) {
      await assert.rejects(
        zfsTools.zfsClone(origin, "rpool/data/vm-201-disk-0"),
        /must be <dataset>@<snapshot>/,
      );
    }
    await assert.rejects(zfsTools.zfsClone("rpool/a@s", "-o"), /must be a dataset name/);
    assert.deepEqual(fake.calls(), []);
  });
});

describe("partitions", () => {
  test("partx reads an MBR's entries in 512-byte sectors", async () => {
    const image = sparseFile("mbr.img", 32);
    const mbr = Buffer.alloc(512);
    // Partition 1: type 0x83, from sector 2048 for 10240 sectors; partition 2 right after it.
    mbr.writeUInt8(0x83, 446 + 4);
    mbr.writeUInt32LE(2048, 446 + 8);
    mbr.writeUInt32LE(10240, 446 + 12);
    mbr.writeUInt8(0x83, 462 + 4);
    mbr.writeUInt32LE(12288, 462 + 8);
    mbr.writeUInt32LE(4096, 462 + 12);
    mbr.writeUInt16LE(0xaa55, 510);
    const fd = openSync(image, "r+");
    writeSync(fd, mbr, 0, 512, 0);
    closeSync(fd);
    assert.deepEqual(await tools.partitions(image), [
      { number: 1, startSector: 2048, sectors: 10240 },
      { number: 2, startSector: 12288, sectors: 4096 },
    ]);
    const found = await tools.blkid(image);
    assert.ok(typeof found === "object");
    assert.equal(found.ptType, "dos");
    assert.equal(found.type, undefined);
  });
});

describe("helpers", () => {
  test("renderCommand quotes only what a shell would misread", () => {
    assert.equal(
      renderCommand(["e2fsck", "-f", "-n", "/dev/zvol/rpool/data/vm-100-disk-0"]),
      "e2fsck -f -n /dev/zvol/rpool/data/vm-100-disk-0",
    );
    assert.equal(renderCommand(["e2fsck", "/tmp/a b", "it's"]), "e2fsck '/tmp/a b' 'it'\\''s'");
  });

  test("resolveProgram finds executables only, in PATH order", () => {
    const a = mkdtempSync(join(root, "pa-"));
    const b = mkdtempSync(join(root, "pb-"));
    writeFileSync(join(a, "tool"), "not executable");
    mkdirSync(join(a, "dir-tool"));
    writeFileSync(join(b, "tool"), "#!/bin/sh\n");
    chmodSync(join(b, "tool"), 0o755);
    assert.equal(resolveProgram("tool", `${a}${delimiter}${b}`), join(b, "tool"));
    assert.equal(resolveProgram("dir-tool", a), undefined);
    assert.equal(resolveProgram("tool", undefined), undefined);
  });
});
