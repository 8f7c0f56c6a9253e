/**
 * @jest-environment node
 */
// Node 20's own fetch/Request/Headers/Response; `fetch` itself is the boundary we replace.
import { ServerConnection } from '@jupyterlab/services';

import { ApiError, errorMessage, query, requestAPI, XnatHpcClient } from '../api';

/** Settings as in a page with no page config; the XSRF cookie lives on `document` (set in beforeEach). */
function makeSettings(options: Partial<ServerConnection.ISettings>): ServerConnection.ISettings {
  const doc = (globalThis as any).document;
  delete (globalThis as any).document;
  try {
    return ServerConnection.makeSettings(options);
  } finally {
    (globalThis as any).document = doc;
  }
}

type Call = { url: string; method: string; headers: Headers; body: string };

function server(respond: (call: Call) => Response | Promise<Response>): {
  settings: ServerConnection.ISettings;
  calls: Call[];
} {
  const calls: Call[] = [];
  const fetchImpl = async (req: Request): Promise<Response> => {
    const call = { url: req.url, method: req.method, headers: req.headers, body: await req.text() };
    calls.push(call);
    return respond(call);
  };
  const settings = makeSettings({
    baseUrl: 'http://127.0.0.1:8888/user/alice/',
    fetch: fetchImpl as unknown as typeof fetch,
    token: ''
  });
  return { settings, calls };
}

const json = (status: number, body: unknown): Response =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

/** The path of a request without the cache-buster query ServerConnection appends. */
const pathOf = (url: string): string => {
  const u = new URL(url);
  const params = [...u.searchParams.entries()].filter(([k, v]) => !(k.match(/^\d+$/) && v === ''));
  const q = params.map(([k, v]) => `${k}=${v}`).join('&');
  return u.pathname + (q ? `?${q}` : '');
};

/** The ApiError a call rejects with (fails the test when it resolves). */
const failure = (p: Promise<unknown>): Promise<ApiError> =>
  p.then(
    () => {
      throw new Error('expected the request to fail');
    },
    (e: ApiError) => e
  );

beforeEach(() => {
  (globalThis as any).document = { cookie: '_xsrf=tok-123', getElementById: () => null };
});
afterEach(() => {
  delete (globalThis as any).document;
});

describe('requestAPI', () => {
  it('prefixes the API path, sends the XSRF token and JSON, parses the answer', async () => {
    const { settings, calls } = server(() => json(201, { name: 'ds1', version: 1 }));
    const out = await requestAPI<{ name: string }>('datasets', { method: 'POST', body: JSON.stringify({ a: 1 }) }, settings);
    expect(out).toEqual({ name: 'ds1', version: 1 });
    expect(calls).toHaveLength(1);
    expect(pathOf(calls[0].url)).toBe('/user/alice/xnat-hpc/api/datasets');
    expect(calls[0].method).toBe('POST');
    expect(calls[0].headers.get('X-XSRFToken')).toBe('tok-123');
    expect(calls[0].headers.get('Content-Type')).toBe('application/json');
    expect(JSON.parse(calls[0].body)).toEqual({ a: 1 });
  });

  it('resolves undefined for 204', async () => {
    const { settings } = server(() => new Response(null, { status: 204 }));
    await expect(requestAPI('datasets/x', { method: 'DELETE' }, settings)).resolves.toBeUndefined();
  });

  it('turns a JSON error body into an ApiError with status, reason, message and item', async () => {
    const { settings } = server(() =>
      json(403, { error: 'out_of_scope', message: 'project SECRET is outside your scope', item: 'SECRET' })
    );
    const err = await failure(requestAPI('projects/SECRET/subjects', {}, settings));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(403);
    expect(err.reason).toBe('out_of_scope');
    expect(err.item).toBe('SECRET');
    expect(err.message).toBe('project SECRET is outside your scope');
    expect(errorMessage(err)).toBe('project SECRET is outside your scope');
    expect(err.transient).toBe(false);
  });

  it('words a non-JSON error page without dumping it', async () => {
    const { settings } = server(() => new Response('<html>Bad Gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    const err = await failure(requestAPI('jobs', {}, settings));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.message).toBe('the server answered 502 (Bad Gateway)');
    expect(err.message).not.toContain('<html>');
    expect(err.transient).toBe(true);
  });

  it('reports an unreachable server as status 0, transient', async () => {
    const settings = makeSettings({
      baseUrl: 'http://127.0.0.1:8888/',
      fetch: (() => Promise.reject(new TypeError('Failed to fetch'))) as unknown as typeof fetch
    });
    const err = await failure(requestAPI('jobs', {}, settings));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(0);
    expect(err.transient).toBe(true);
    expect(err.message).toMatch(/cannot reach the Jupyter server/);
  });

  it('rejects an answer that is not JSON', async () => {
    const { settings } = server(() => new Response('not json', { status: 200 }));
    await expect(requestAPI('jobs', {}, settings)).rejects.toThrow('not JSON');
  });
});

describe('query', () => {
  it('encodes values and skips empty ones', () => {
    expect(query({ offset: 0, limit: 100, subject: undefined, scan: null })).toBe('?offset=0&limit=100');
    expect(query({ subject: 'S 1/2' })).toBe('?subject=S%201%2F2');
    expect(query({})).toBe('');
  });
});

describe('XnatHpcClient', () => {
  it('calls the contract paths with encoded ids', async () => {
    const { settings, calls } = server(call => {
      if (call.url.includes('/logs')) {
        return json(200, { text: 'hi\n', offset: 3, state: 'running' });
      }
      return json(200, { items: [], total: 0, offset: 0, limit: 100 });
    });
    const c = new XnatHpcClient(settings);
    await c.projects();
    await c.subjects('NEURO_MRI', 100, 100);
    await c.experiments('NEURO_MRI', 'S 01', 0, 100);
    await c.scans('NEURO_MRI', 'E1');
    await c.resources('NEURO_MRI', 'E1');
    await c.datasets();
    await c.limits();
    await c.scripts();
    await c.jobs();
    expect(await c.logs('j3fa94c0d12ab', 42)).toEqual({ text: 'hi\n', offset: 3, state: 'running' });
    await c.submit({ dataset: 'd', script: 'train.py', client_token: 'tok' });
    await c.cancel('j3fa94c0d12ab');
    await c.results('j3fa94c0d12ab');
    await c.publish('j3fa94c0d12ab', 'CARDIO_ECG');
    await c.shares();
    await c.share('dave');
    await c.unshare('erin smith');
    expect(calls.map(x => `${x.method} ${pathOf(x.url).replace('/user/alice/xnat-hpc/api/', '')}`)).toEqual([
      'GET projects',
      'GET projects/NEURO_MRI/subjects?offset=100&limit=100',
      'GET projects/NEURO_MRI/experiments?subject=S 01&offset=0&limit=100',
      'GET projects/NEURO_MRI/experiments/E1/scans',
      'GET projects/NEURO_MRI/experiments/E1/resources',
      'GET datasets',
      'GET limits',
      'GET scripts',
      'GET jobs',
      'GET jobs/j3fa94c0d12ab/logs?offset=42',
      'POST jobs',
      'POST jobs/j3fa94c0d12ab/cancel',
      'GET jobs/j3fa94c0d12ab/results',
      'POST jobs/j3fa94c0d12ab/publish',
      'GET shares',
      'POST shares',
      'DELETE shares/erin%20smith'
    ]);
    expect(JSON.parse(calls[15].body)).toEqual({ user: 'dave' });
    expect(JSON.parse(calls[10].body)).toEqual({ dataset: 'd', script: 'train.py', client_token: 'tok' });
    expect(JSON.parse(calls[13].body)).toEqual({ project: 'CARDIO_ECG' });
  });

  it('encodes a dataset name with spaces and dots in DELETE', async () => {
    const { settings, calls } = server(() => new Response(null, { status: 204 }));
    await new XnatHpcClient(settings).deleteDataset('t1 base.v2');
    expect(calls[0].method).toBe('DELETE');
    expect(new URL(calls[0].url).pathname).toBe('/user/alice/xnat-hpc/api/datasets/t1%20base.v2');
  });
});
