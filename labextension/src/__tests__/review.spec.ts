import { diffJobs, jobStateInfo } from '../jobs';
import { IJob, IReview } from '../types';

function job(review: IReview | null, state: IJob['state'] = 'done'): IJob {
  return {
    id: 'j000000000001',
    user: 'bob',
    dataset: 'ecg',
    dataset_version: 1,
    manifest_sha256: 'a'.repeat(64),
    script: 'train.py',
    script_sha256: 'b'.repeat(64),
    resources: { partition: 'secure', cpus: 1, memory: 2 ** 31, gpus: 0, walltime: 3600 },
    state,
    slurm_job_id: '1001',
    created: '2026-11-26T09:00:00Z',
    updated: '2026-11-26T10:00:00Z',
    started: null,
    ended: null,
    exit_code: 0,
    message: 'done: 3 result file(s), held for review by the owners of CARDIO_ECG',
    client_token: null,
    review
  };
}

const held: IReview = {
  state: 'held',
  reason: '',
  since: '2026-11-26T10:00:00Z',
  projects: ['CARDIO_ECG', 'NEURO_MRI'],
  pending: ['CARDIO_ECG']
};

describe('jobStateInfo', () => {
  it('says "held for review" and whose review it waits for', () => {
    const info = jobStateInfo(job(held));
    expect(info.label).toBe('held for review');
    expect(info.tooltip).toContain('CARDIO_ECG');
    expect(info.tooltip).not.toContain('NEURO_MRI');
  });

  it('says "rejected: reason"', () => {
    const info = jobStateInfo(job({ ...held, state: 'rejected', reason: 'single patients named', pending: [] }));
    expect(info.label).toBe('rejected: single patients named');
    expect(info.tooltip).toContain('deleted');
  });

  it('shows the plain state otherwise', () => {
    expect(jobStateInfo(job(null)).label).toBe('done');
    expect(jobStateInfo(job({ ...held, state: 'approved', pending: [] })).label).toBe('done');
    expect(jobStateInfo(job(held, 'running')).label).toBe('running');
  });

  it('re-renders a row when only the review changed', () => {
    const before = [job(held)];
    const after = [job({ ...held, state: 'rejected', reason: 'no', pending: [] })];
    expect(diffJobs(before, after).changed).toEqual(['j000000000001']);
  });
});
