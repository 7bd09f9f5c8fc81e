/**
 * "Did you mean" suggestions for mistyped config keys, profile keys and +modifiers.
 */

/**
 * Edit distance where an insertion, a deletion, a substitution or a swap of two neighbouring letters
 * each cost 1 (optimal string alignment). Swaps count once because "corse" for "cores" is one slip.
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    const row = rows[i]!;
    const above = rows[i - 1]!;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(above[j]! + 1, row[j - 1]! + 1, above[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j]!, rows[i - 2]![j - 2]! + 1);
      }
    }
  }
  return rows[a.length]![b.length]!;
}

/**
 * The candidate nearest to `word`, if it is near enough to be a plausible typo. The allowance grows with
 * the word's length (1 edit up to 5 letters, 2 up to 8, then 3) so that short words do not "match"
 * unrelated short candidates. Ties go to the earlier candidate, which keeps the answer deterministic.
 */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  const needle = word.toLowerCase();
  const allowance = Math.max(1, Math.min(3, Math.floor(needle.length / 3)));
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of candidates) {
    const distance = editDistance(needle, candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  // Distance 0 with a different spelling is a case slip ("Proxmox_Backend"), worth pointing out.
  return bestDistance <= allowance && best !== word ? best : undefined;
}
