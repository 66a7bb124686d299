// Sizes progress bars from their aria-valuenow (no inline styles: the CSP forbids them).
for (const bar of document.querySelectorAll('.progress[aria-valuenow]')) {
  const fill = bar.querySelector('span');
  if (fill) fill.style.width = `${Math.max(0, Math.min(100, Number(bar.getAttribute('aria-valuenow'))))}%`;
}
