/** What every model operation sees: the directory, the locked state, the knobs, and one clock reading. */
import type { Control } from "./control.js";
import type { SimState } from "./types.js";

export interface Ctx {
  dir: string;
  state: SimState;
  control: Control;
  now: number;
}
