// The director's privacy card, live: ε spent, the budget and the rounds it still allows, from
// the `privacy` section of the director socket's `state` (null without differential privacy).
// The text is what screen readers hear (a polite live region); the meter shows the same numbers.

const plural = (count, word) => `${count} ${word}${count === 1 ? '' : 's'}`;

/** The texts of the card for one `privacy` section (pure, unit-tested). */
export function privacyTexts(privacy) {
  const spent = Number(privacy.epsilon_spent).toFixed(3);
  const budget = privacy.epsilon_budget;
  const left = privacy.rounds_left;
  return {
    spent: `${spent} of ${budget} after ${plural(privacy.rounds_spending, 'round')}`,
    left:
      `${plural(left, 'more round')} fit the budget (it allows ${privacy.rounds_allowed}` +
      (privacy.rounds_allowed >= privacy.rounds_planned
        ? `, all ${privacy.rounds_planned} planned)`
        : ` of the ${privacy.rounds_planned} planned: the job stops there)`),
    summary:
      `Privacy budget: ε = ${spent} of ${budget} spent (δ = ${privacy.delta}); ` +
      (left ? `${plural(left, 'more round')} fit the budget.` : 'no more rounds fit the budget.') +
      (privacy.clip_norm == null ? '' : ` Clip norm C = ${privacy.clip_norm}.`),
  };
}

/** Update the card's elements (those present on the page) from `privacy`. */
export function renderPrivacy(privacy) {
  if (!privacy) return;
  const texts = privacyTexts(privacy);
  const set = (id, value) => {
    const element = document.getElementById(id);
    if (element && element.textContent !== value) element.textContent = value;
  };
  set('epsilon-spent', texts.spent);
  set('rounds-left', texts.left);
  set('privacy-live', texts.summary);
  const meter = document.getElementById('epsilon-meter');
  if (meter) {
    meter.max = privacy.epsilon_budget;
    meter.value = Math.min(privacy.epsilon_spent, privacy.epsilon_budget);
    meter.setAttribute('aria-valuetext', texts.summary);
  }
}
