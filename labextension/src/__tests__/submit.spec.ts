import { ApiError } from '../api';
import { SubmitController } from '../submit';
import { IJob, ILimits, ISubmitRequest } from '../types';
import { defaultForm } from '../validate';

const limits: ILimits = {
  partition: 'secure',
  partitions: ['secure'],
  max_cpus: 4,
  max_memory: 8 * 1024 ** 3,
  max_gpus: 0,
  max_walltime: 7200,
  default_cpus: 1,
  default_memory: 2 * 1024 ** 3,
  default_gpus: 0,
  default_walltime: 3600
};

const form = { ...defaultForm(limits, { script: 'train.py' }), dataset: 't1' };

/** A server that answers after `release()`, like a slow POST jobs. */
function slowServer() {
  const posted: ISubmitRequest[] = [];
  let release: () => void = () => undefined;
  let fail: ApiError | null = null;
  const post = (req: ISubmitRequest): Promise<IJob> => {
    posted.push(req);
    return new Promise<IJob>((resolve, reject) => {
      release = () => (fail ? reject(fail) : resolve({ id: 'j000000000001', state: 'staging', client_token: req.client_token } as IJob));
    });
  };
  return {
    posted,
    post,
    release: () => release(),
    failWith: (e: ApiError | null) => {
      fail = e;
    }
  };
}

describe('SubmitController', () => {
  it('a double click posts once, with the client token, and reports busy around the request', async () => {
    const srv = slowServer();
    const busy: boolean[] = [];
    const c = new SubmitController(srv.post, b => busy.push(b), 'tok-1');
    const first = c.submit(form, limits, ['t1']);
    const second = await c.submit(form, limits, ['t1']); // the second click, while the first is in flight
    expect(second).toEqual({ kind: 'ignored' });
    expect(c.inFlight).toBe(true);
    srv.release();
    const out = await first;
    expect(out.kind).toBe('submitted');
    expect(srv.posted).toHaveLength(1);
    expect(srv.posted[0]).toEqual({
      dataset: 't1',
      script: 'train.py',
      partition: 'secure',
      cpus: 1,
      memory: 2 * 1024 ** 3,
      gpus: 0,
      walltime: 3600,
      client_token: 'tok-1'
    });
    expect(busy).toEqual([true, false]);
    // a click after success does not post again either
    expect((await c.submit(form, limits)).kind).toBe('submitted');
    expect(srv.posted).toHaveLength(1);
  });

  it('does not post an invalid form', async () => {
    const srv = slowServer();
    const c = new SubmitController(srv.post);
    const out = await c.submit({ ...form, cpus: '5' }, limits);
    expect(out).toEqual({ kind: 'invalid', errors: { cpus: 'CPUs must be at most 4 (the limit for this partition)' } });
    expect(srv.posted).toHaveLength(0);
  });

  it("shows the server's message and retries with the same token", async () => {
    const srv = slowServer();
    const c = new SubmitController(srv.post, undefined, 'tok-2');
    srv.failWith(new ApiError(400, "script 'train.py' is not inside your workspace", 'invalid_request'));
    const p = c.submit(form, limits);
    srv.release();
    expect(await p).toEqual({ kind: 'failed', message: "script 'train.py' is not inside your workspace" });
    expect(c.inFlight).toBe(false);
    srv.failWith(null);
    const retry = c.submit(form, limits);
    srv.release();
    expect((await retry).kind).toBe('submitted');
    expect(srv.posted.map(r => r.client_token)).toEqual(['tok-2', 'tok-2']);
  });

  it('gives each dialog its own uuid token', () => {
    const a = new SubmitController(async () => ({}) as IJob);
    const b = new SubmitController(async () => ({}) as IJob);
    expect(a.clientToken).toMatch(/^[0-9a-f-]{36}$/);
    expect(a.clientToken).not.toBe(b.clientToken);
  });
});
