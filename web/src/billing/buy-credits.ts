/**
 * Where a customer buys credits: the product's checkout, `NEXT_PUBLIC_BUY_CREDITS_URL`, inlined by
 * `next build`. Without it the page offers no button, rather than one that leads nowhere.
 */
export function buyCreditsUrl(): string | null {
  return process.env.NEXT_PUBLIC_BUY_CREDITS_URL?.trim() || null;
}
