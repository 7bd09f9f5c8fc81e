/**
 * The progress steps of `sandbox exec` that carry the command's output (`data`: base64 bytes, in the
 * order they came). Apart from exec.ts (the method's schemas) so the CLI tells them apart without zod.
 */
export const EXEC_STDOUT_STEP = "stdout";
export const EXEC_STDERR_STEP = "stderr";
