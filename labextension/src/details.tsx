/**
 * One job's details in the main area: state, resources, streaming logs
 * (`GET jobs/{id}/logs?offset=`), Cancel (with confirmation),
 * "Open results" once it is done and "Publish to XNAT…" (with confirmation:
 * the results and the hub's signed RO-Crate become a resource of the XNAT item
 * the dataset covers, visible to the project).
 */
import { Dialog, ReactWidget, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import * as React from 'react';

import { errorMessage, XnatHpcClient } from './api';
import { formatElapsed, formatMemory, formatSize, formatWalltime, jobElapsed } from './format';
import { jobStateInfo } from './jobs';
import { jobStaging, StagingBar } from './progress';
import { ACTIVE_STATES, IJob, IPublication, IResults } from './types';

/** Log text kept in the view (the newest part; the file on disk has it all). */
export const MAX_LOG_CHARS = 1_000_000;
/** ms between polls of the record and the log; faster while the job is staging. */
export const INTERVAL = 1000;
export const STAGING_INTERVAL = 500;

export class JobDetails extends ReactWidget {
  job: IJob | null = null;
  log = '';
  offset = 0;
  error: string | null = null;
  resultFiles: IResults['files'] | null = null;
  publication: IPublication | null = null;
  publishing = false;
  private readonly poll: Poll;
  private ended = false;
  private fast = false;

  constructor(
    readonly jobId: string,
    private readonly client: XnatHpcClient,
    private readonly openResults: (path: string) => Promise<void>,
    private readonly onChange: (job: IJob) => void = () => undefined
  ) {
    super();
    this.addClass('xnat-hpc-job-details');
    this.node.dataset.testid = 'xnat-hpc-job-details';
    this.node.dataset.jobId = jobId;
    this.poll = new Poll({
      auto: true,
      name: `xnat-hpc:job:${jobId}`,
      frequency: { interval: INTERVAL, backoff: true, max: 30000 },
      standby: () => !this.isVisible || 'when-hidden',
      factory: () => this.tick()
    });
  }

  /** Fetch the record and the next piece of the log; stop once the job ended and the log is drained. */
  async tick(): Promise<void> {
    try {
      const [job, chunk] = await Promise.all([this.client.job(this.jobId), this.client.logs(this.jobId, this.offset)]);
      this.job = job;
      if (chunk.text) {
        this.log = (this.log + chunk.text).slice(-MAX_LOG_CHARS);
      }
      this.offset = chunk.offset;
      this.error = null;
      this.onChange(job);
      // poll faster while the job is staging: its progress moves several times a second
      const fast = job.state === 'staging';
      if (fast !== this.fast && !this.ended) {
        this.fast = fast;
        this.poll.frequency = { interval: fast ? STAGING_INTERVAL : INTERVAL, backoff: true, max: 30000 };
      }
      const done = !ACTIVE_STATES.has(job.state);
      if (done && !chunk.text) {
        if (!this.ended) {
          this.ended = true;
          this.poll.frequency = { interval: Poll.NEVER, backoff: false, max: Poll.NEVER };
        }
      }
    } catch (err) {
      this.error = errorMessage(err);
      throw err;
    } finally {
      this.update();
    }
  }

  async cancel(): Promise<void> {
    const answer = await showDialog({
      title: 'Cancel job',
      body: `Cancel job ${this.jobId}? Its Slurm job is stopped and every plaintext byte on the node is wiped.`,
      buttons: [Dialog.cancelButton({ label: 'Keep running' }), Dialog.warnButton({ label: 'Cancel job' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      this.job = await this.client.cancel(this.jobId);
      this.onChange(this.job);
      this.update();
      void this.poll.refresh();
    } catch (err) {
      await showErrorMessage('Job not cancelled', errorMessage(err));
    }
  }

  /** Publish the results to XNAT after the researcher confirms; XNAT and the hub decide (errors say why). */
  async publish(): Promise<void> {
    const answer = await showDialog({
      title: 'Publish to XNAT',
      body:
        `Publish the results of job ${this.jobId} to XNAT? They become a resource of the XNAT item the ` +
        'dataset covers, readable by the members of its project, with a provenance record the hub signs ' +
        '(dataset, script, Slurm job, approvals).',
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Publish', ariaLabel: 'Publish to XNAT' })]
    });
    if (!answer.button.accept) {
      return;
    }
    this.publishing = true;
    this.update();
    try {
      this.publication = await this.client.publish(this.jobId);
    } catch (err) {
      await showErrorMessage('Not published', errorMessage(err));
    } finally {
      this.publishing = false;
      this.update();
    }
  }

  /** Open the results folder in the file browser (or say where it is when JupyterLab cannot show it). */
  async results(): Promise<void> {
    try {
      const res = await this.client.results(this.jobId);
      this.resultFiles = res.files;
      this.update();
      if (res.path.startsWith('/')) {
        // the server answers an absolute path when the workspace lies outside its root dir
        await showDialog({
          title: 'Results',
          body: `The results of job ${this.jobId} are in ${res.path}, outside the folder JupyterLab shows: ${res.files
            .map(f => `${f.name} (${formatSize(f.size)})`)
            .join(', ')}.`,
          buttons: [Dialog.okButton()]
        });
        return;
      }
      await this.openResults(res.path);
    } catch (err) {
      await showErrorMessage('Results not available', errorMessage(err));
    }
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  render(): JSX.Element {
    const job = this.job;
    if (!job) {
      return (
        <div className={this.error ? 'xnat-hpc-error' : 'xnat-hpc-status'} role="status">
          {this.error || `Loading job ${this.jobId}…`}
        </div>
      );
    }
    const active = ACTIVE_STATES.has(job.state);
    const r = job.resources || ({} as IJob['resources']);
    const info = jobStateInfo(job);
    const staging = jobStaging(job);
    return (
      <div className="xnat-hpc-job-view">
        <div className="xnat-hpc-job-head">
          <span className={`xnat-hpc-job-state xnat-hpc-state-${job.state}`} data-testid="xnat-hpc-job-state" title={info.tooltip}>
            {info.label}
          </span>
          <strong className="xnat-hpc-wrap">{job.script}</strong> on <strong className="xnat-hpc-wrap">{job.dataset}</strong> v{job.dataset_version}
          <span className="xnat-hpc-job-elapsed">{formatElapsed(jobElapsed(job))}</span>
        </div>
        <dl className="xnat-hpc-job-facts">
          <dt>Job</dt>
          <dd>{job.id}</dd>
          <dt>Slurm job</dt>
          <dd>{job.slurm_job_id || '–'}</dd>
          <dt>Resources</dt>
          <dd>
            {r.partition}: {r.cpus} CPU, {r.memory ? formatMemory(r.memory) : '–'}, {r.gpus} GPU,{' '}
            {r.walltime ? formatWalltime(r.walltime) : '–'}
          </dd>
          {job.exit_code !== null && (
            <>
              <dt>Exit code</dt>
              <dd>{job.exit_code}</dd>
            </>
          )}
          <dt>Status</dt>
          <dd>{job.message || '–'}</dd>
          {staging && (
            <>
              <dt>Staging</dt>
              <dd>
                <StagingBar progress={staging} />
              </dd>
            </>
          )}
          {this.publication && (
            <>
              <dt>In XNAT</dt>
              <dd data-testid="xnat-hpc-published">
                <a href={this.publication.url} target="_blank" rel="noopener noreferrer">
                  {this.publication.resource}
                </a>{' '}
                ({this.publication.files} files, {formatSize(this.publication.bytes)}, signed by the hub)
              </dd>
            </>
          )}
          {this.resultFiles && (
            <>
              <dt>Results</dt>
              <dd data-testid="xnat-hpc-result-files">
                {this.resultFiles.map(f => `${f.name} (${formatSize(f.size)})`).join(', ') || '(none)'}
              </dd>
            </>
          )}
        </dl>
        {this.error && (
          <div className="xnat-hpc-error" role="alert">
            {this.error}
          </div>
        )}
        <div className="xnat-hpc-toolbar">
          {active && (
            <button className="jp-mod-styled jp-mod-warn" data-testid="xnat-hpc-cancel" onClick={() => void this.cancel()}>
              Cancel
            </button>
          )}
          {job.state === 'done' && (
            <button className="jp-mod-styled jp-mod-accept" data-testid="xnat-hpc-open-results" onClick={() => void this.results()}>
              Open results
            </button>
          )}
          {job.state === 'done' && !this.publication && (
            <button
              className="jp-mod-styled"
              data-testid="xnat-hpc-publish"
              disabled={this.publishing}
              onClick={() => void this.publish()}
            >
              {this.publishing ? 'Publishing…' : 'Publish to XNAT…'}
            </button>
          )}
        </div>
        <pre className="xnat-hpc-log" data-testid="xnat-hpc-log" aria-label="Job log" aria-live="off" tabIndex={0}>
          {this.log || (active ? 'waiting for output…' : '(no output)')}
        </pre>
      </div>
    );
  }
}
