// The dashboard's one script: refreshes the page in place (every 30 s, and on the Refresh button) and sends the
// buttons' requests, showing their answers in place. It talks to itsmc only; the key the page was opened with
// (?code=, the Functions host's way) goes along as the x-functions-key header.
(() => {
  const key = new URLSearchParams(location.search).get('code');
  const headers = key ? { 'x-functions-key': key } : {};
  let latest = 0;

  async function refresh(fresh) {
    const asked = ++latest;
    const button = document.getElementById('refresh');
    const url = new URL(location.href);
    if (fresh) url.searchParams.set('fresh', '1'); else url.searchParams.delete('fresh');
    button.disabled = true;
    try {
      const answer = await fetch(url, { headers: { ...headers, accept: 'text/html' } });
      if (!answer.ok || asked !== latest) return;
      const page = new DOMParser().parseFromString(await answer.text(), 'text/html');
      // The buttons' answers stay where they were shown.
      for (const output of document.querySelectorAll('#dashboard output')) {
        const next = page.getElementById(output.id);
        if (next && output.textContent) {
          next.textContent = output.textContent;
          next.className = output.className;
        }
      }
      for (const id of ['dashboard', 'built']) {
        const next = page.getElementById(id);
        if (next) document.getElementById(id).replaceWith(next);
      }
    } catch (error) {
      document.getElementById('built').textContent = 'itsmc did not answer: ' + error;
    } finally {
      if (asked === latest) button.disabled = false;
    }
  }

  function describe(body) {
    if (body.error) return body.error.code + ': ' + body.error.message;
    if (body.diagnosis) body = body.diagnosis;
    if (body.outcome) return body.outcome === 'pending' ? 'back in the outbox' : body.outcome;
    return (body.ok ? 'ok: ' : (body.code || 'failed') + ': ') + (body.message || '');
  }

  document.getElementById('refresh').addEventListener('click', () => refresh(true));
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-post]');
    if (!button) return;
    const out = document.getElementById(button.dataset.out);
    button.disabled = true;
    out.className = '';
    out.textContent = 'working…';
    try {
      const answer = await fetch(button.dataset.post, { method: 'POST', headers });
      const json = (answer.headers.get('content-type') || '').includes('json');
      const body = json ? await answer.json() : { error: { code: 'HTTP ' + answer.status, message: answer.statusText } };
      out.textContent = describe(body);
      out.className = answer.ok && body.ok !== false ? 'done' : 'failed';
    } catch (error) {
      out.textContent = 'itsmc did not answer: ' + error;
      out.className = 'failed';
    } finally {
      button.disabled = false;
    }
  });
  setInterval(() => refresh(false), 30000);
})();
