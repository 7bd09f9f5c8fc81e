import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { parseKnob } from "../pvesim/control.js";
import { createSim, runTool, type Sim, setControl } from "../pvesim/harness.js";

/**
 * The `guests` knob's fast parts (no QEMU needed): its values are checked, and a real-guest start
 * without a usable image fails in its task with a message that says what to do.
 */
describe("pvesim: guests=qemu without an image", () => {
  let sim: Sim | undefined;
  after(() => sim?.cleanup());

  it("knobs guests, guest_accel and guest_net take only their words", () => {
    assert.deepEqual(parseKnob("guests=qemu"), ["guests", "qemu"]);
    assert.throws(() => parseKnob("guests=vm"), /knob guests wants one of process, qemu, got 'vm'/);
    assert.throws(() => parseKnob("guest_accel=hvf"), /knob guest_accel wants one of auto, tcg, kvm/);
    assert.throws(() => parseKnob("guest_net=bridge"), /knob guest_net wants one of tap, user/);
    assert.deepEqual(parseKnob("guest_memory_mb=512"), ["guest_memory_mb", 512]);
  });

  it("qm start fails with the missing image named, and the VM stays stopped", async () => {
    sim = createSim({ knobs: { clone_ms: 20, task_ms: 20 } });
    assert.equal((await runTool(sim, "qm", ["clone", "9000", "101"])).code, 0);
    await setControl(sim.dir, { guests: "qemu" });
    const r = await runTool(sim, "qm", ["start", "101"]);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /start failed: pvesim guests=qemu needs a guest image: set the knob guest_image/);
    await setControl(sim.dir, { guest_image: "/nonexistent/image" });
    const again = await runTool(sim, "qm", ["start", "101"]);
    assert.match(
      again.stderr,
      /guest image '\/nonexistent\/image' is incomplete \(missing manifest\.json, rootfs\.raw/,
    );
    assert.match((await runTool(sim, "qm", ["status", "101"])).stdout, /status: stopped/);
  });
});
