// Shopping cart helpers for the storefront.
import { formatPrice } from "./format.js";

const TAX_RATE = 0.2;

export function subtotal(items) {
  return items.reduce((sum, item) => sum + item.price * item.quantity, 0);
}

export function total(items) {
  const net = subtotal(items);
  return net + net * TAX_RATE;
}

export function describe(items) {
  const lines = items.map((item) => `${item.quantity} x ${item.name}`);
  return lines.join("\n") + "\nTotal: " + formatPrice(<|cursor|>);
}

export default { subtotal, total, describe };
