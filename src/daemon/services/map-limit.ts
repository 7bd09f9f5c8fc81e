/**
 * Run `work` for each item with at most `limit` calls in flight; results keep the items' order. The
 * one bounded fan-out of the services (stop --all, the workspace check's config scan): each caller
 * names its own limit, so no pass can open a Proxmox call per row at once.
 */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return results;
}
