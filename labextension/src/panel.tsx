/**
 * The "XNAT" left side panel: the XNAT browser (tree + Create dataset), the
 * dataset list and the jobs list, with one status line for errors in words.
 */
import { Dialog, InputDialog, ReactWidget, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import * as React from 'react';

import { errorMessage, XnatHpcClient } from './api';
import { DatasetsModel } from './datasets';
import { formatCount, formatElapsed, formatSize, jobElapsed } from './format';
import { JobListModel, jobStateInfo } from './jobs';
import { Trunc } from './labels';
import { JobsPoller } from './poller';
import { ShareBody } from './share';
import { jobStaging, StagingBar, stagingText } from './progress';
import { TreeModel } from './tree';
import { TreeView } from './tree-view';
import { ACTIVE_STATES, IDataset, IJob } from './types';
import { validateDatasetName } from './validate';

export interface IPanelOptions {
  client: XnatHpcClient;
  /** Open the details view of one job. */
  openJob: (id: string) => void;
  /** Open the Train dialog (optionally for a dataset). */
  train: (dataset?: string) => void;
}

function useModel(model: { subscribe(fn: () => void): () => void }): void {
  const [, setTick] = React.useState(0);
  React.useEffect(() => model.subscribe(() => setTick(t => t + 1)), [model]);
}

/** Re-render every second while `on` (for elapsed times). */
function useNow(on: boolean): number {
  const [now, setNow] = React.useState(Date.now());
  React.useEffect(() => {
    if (!on) {
      return;
    }
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [on]);
  return now;
}

function DatasetList(props: { model: DatasetsModel; onDelete: (d: IDataset) => void; onTrain: (d: IDataset) => void }): JSX.Element {
  const { model } = props;
  useModel(model);
  return (
    <div className="xnat-hpc-section">
      <h3 className="xnat-hpc-heading" id="xnat-hpc-datasets-heading">
        Datasets
      </h3>
      {model.error && (
        <div className="xnat-hpc-error" role="alert">
          {model.error}
        </div>
      )}
      <ul className="xnat-hpc-dataset-list" data-testid="xnat-hpc-dataset-list" aria-labelledby="xnat-hpc-datasets-heading">
        {!model.items.length && !model.loading && <li className="xnat-hpc-status">No dataset yet: select items above.</li>}
        {model.items.map(d => (
          <li key={d.name} className="xnat-hpc-dataset" data-name={d.name}>
            <Trunc className="xnat-hpc-dataset-name" text={d.name} />
            <span className="xnat-hpc-detail">v{d.version}</span>
            <span className="xnat-hpc-size">
              {formatCount(d.file_count)}, {formatSize(d.total_size)}
            </span>
            <button className="jp-mod-styled xnat-hpc-small" onClick={() => props.onTrain(d)} aria-label={`Train on dataset ${d.name}`}>
              Train…
            </button>
            <button className="jp-mod-styled jp-mod-warn xnat-hpc-small" onClick={() => props.onDelete(d)} aria-label={`Delete dataset ${d.name}`}>
              Delete
            </button>
          </li>
        ))}
      </ul>
    </div>
  );
}

const JobRow = React.memo(function JobRow(props: { job: IJob; now: number; onOpen: (id: string) => void }): JSX.Element {
  const { job } = props;
  const info = jobStateInfo(job);
  const staging = jobStaging(job);
  const what = `${job.script} · ${job.dataset}`;
  return (
    <li className="xnat-hpc-job" data-job-id={job.id}>
      <button
        className="xnat-hpc-job-open"
        onClick={() => props.onOpen(job.id)}
        title={[what, job.message].filter(Boolean).join('\n')}
        aria-label={`Job ${job.id}: ${info.label}, ${job.script} on ${job.dataset}${staging ? `, ${stagingText(staging)}` : ''}`}
      >
        <span className={`xnat-hpc-job-state xnat-hpc-state-${job.state}`} data-testid="xnat-hpc-job-state" title={info.tooltip}>
          {info.label}
        </span>
        <Trunc className="xnat-hpc-job-what" text={what} />
        <span className="xnat-hpc-job-elapsed">{formatElapsed(jobElapsed(job, props.now))}</span>
        <span className="xnat-hpc-detail">{job.slurm_job_id ? `Slurm ${job.slurm_job_id}` : job.id}</span>
      </button>
      {staging && <StagingBar progress={staging} compact />}
    </li>
  );
});

function JobsList(props: { model: JobListModel; openJob: (id: string) => void }): JSX.Element {
  const { model } = props;
  useModel(model);
  const now = useNow(model.hasActive);
  return (
    <div className="xnat-hpc-section" data-testid="xnat-hpc-jobs" id="xnat-hpc-jobs">
      <h3 className="xnat-hpc-heading" id="xnat-hpc-jobs-heading">
        Jobs
      </h3>
      <ul className="xnat-hpc-job-list" aria-labelledby="xnat-hpc-jobs-heading">
        {!model.jobs.length && <li className="xnat-hpc-status">No job yet.</li>}
        {model.visible.map(j => (
          // only active rows get the ticking clock, so finished rows never re-render
          <JobRow key={j.id} job={j} now={ACTIVE_STATES.has(j.state) ? now : 0} onOpen={props.openJob} />
        ))}
      </ul>
      {model.hiddenCount > 0 && (
        <button className="jp-mod-styled" onClick={() => model.showMore()}>
          Show more ({model.hiddenCount} older)
        </button>
      )}
    </div>
  );
}

function PanelView(props: { panel: XnatPanel }): JSX.Element {
  const { panel } = props;
  useModel(panel.tree);
  const [status, setStatus] = React.useState<{ text: string; error: boolean } | null>(null);
  const [busy, setBusy] = React.useState(false);
  React.useEffect(() => {
    panel.setStatus = (text, error = false) => setStatus(text ? { text, error } : null);
  }, [panel]);
  const count = panel.tree.selectedCount;
  return (
    <div className="xnat-hpc-panel-body">
      <div className="xnat-hpc-toolbar">
        <button className="jp-mod-styled" onClick={() => void panel.reload()} aria-label="Reload projects, datasets and jobs">
          Reload
        </button>
        <button
          className="jp-mod-styled jp-mod-accept"
          data-testid="xnat-hpc-create-dataset"
          id="xnat-hpc-create-dataset"
          disabled={!count || busy}
          onClick={async () => {
            setBusy(true);
            try {
              await panel.createDataset();
            } finally {
              setBusy(false);
            }
          }}
        >
          {busy ? 'Creating dataset…' : `Create dataset${count ? ` (${count})` : ''}`}
        </button>
        <button className="jp-mod-styled" onClick={() => panel.options.train()}>
          Train…
        </button>
        <button className="jp-mod-styled" data-testid="xnat-hpc-share-server" onClick={() => void panel.share()}>
          Share…
        </button>
      </div>
      {status && (
        <div className={status.error ? 'xnat-hpc-error' : 'xnat-hpc-status'} role="status" aria-live="polite" data-testid="xnat-hpc-status">
          {status.text}
        </div>
      )}
      <div className="xnat-hpc-section">
        <h3 className="xnat-hpc-heading">XNAT</h3>
        <TreeView model={panel.tree} />
      </div>
      <DatasetList
        model={panel.datasets}
        onTrain={d => panel.options.train(d.name)}
        onDelete={d => void panel.deleteDataset(d)}
      />
      <JobsList model={panel.jobs} openJob={panel.options.openJob} />
    </div>
  );
}

export class XnatPanel extends ReactWidget {
  readonly tree: TreeModel;
  readonly datasets: DatasetsModel;
  readonly jobs: JobListModel;
  readonly poller: JobsPoller;
  /** Set by the view: show a line of text (an error in words, or progress). */
  setStatus: (text: string | null, error?: boolean) => void = () => undefined;
  private loaded = false;

  constructor(readonly options: IPanelOptions) {
    super();
    this.id = 'xnat-hpc-panel';
    this.node.dataset.testid = 'xnat-hpc-panel';
    this.addClass('xnat-hpc-panel');
    this.title.caption = 'XNAT data and secure HPC jobs';
    this.tree = new TreeModel(options.client);
    this.datasets = new DatasetsModel(options.client);
    this.jobs = new JobListModel();
    this.poller = new JobsPoller({
      isVisible: () => this.isVisible,
      tick: async () => {
        this.jobs.update((await options.client.jobs()).items);
        return this.jobs.activity;
      },
      onError: err => this.setStatus(`Jobs: ${errorMessage(err)}`, true),
      onRecover: () => this.setStatus(null)
    });
  }

  protected onAfterShow(): void {
    if (!this.loaded) {
      this.loaded = true;
      void this.tree.loadProjects();
      void this.datasets.refresh();
    }
    void this.poller.refresh();
  }

  async reload(): Promise<void> {
    this.setStatus(null);
    await Promise.all([this.tree.loadProjects(), this.datasets.refresh(), this.poller.refresh()]);
  }

  /** Ask for a name, validate it, create the dataset from the tree's selection. */
  async createDataset(): Promise<void> {
    const selection = this.tree.selection();
    let name = '';
    for (;;) {
      const answer = await InputDialog.getText({
        title: 'Create dataset',
        label: `Name for a dataset of ${selection.length} selected item(s):`,
        placeholder: 'e.g. t1-baseline',
        text: name,
        okLabel: 'Create'
      });
      if (!answer.button.accept) {
        return;
      }
      name = (answer.value || '').toString();
      const problem = validateDatasetName(name);
      if (!problem) {
        break;
      }
      await showErrorMessage('Dataset name not allowed', problem);
    }
    this.setStatus(`Creating dataset "${name}" (listing and hashing files)…`);
    try {
      const ds = await this.datasets.create(name, selection);
      this.tree.clearSelection();
      this.setStatus(`Dataset "${ds.name}" v${ds.version}: ${formatCount(ds.file_count)}, ${formatSize(ds.total_size)}`);
    } catch (err) {
      this.setStatus(null);
      await showErrorMessage('Dataset not created', errorMessage(err));
    }
  }

  /** Who this server is shared with, and share it with one more user (the hub decides). */
  async share(): Promise<void> {
    const body = new ShareBody(this.options.client);
    await body.load();
    const answer = await showDialog({
      title: 'Share this server',
      body,
      buttons: [Dialog.cancelButton({ label: 'Close' }), Dialog.okButton({ label: 'Share', ariaLabel: 'Share this server' })]
    });
    const user = answer.value || '';
    if (!answer.button.accept || !user) {
      return;
    }
    try {
      await this.options.client.share(user);
      const url = new URL(PageConfig.getBaseUrl(), window.location.href).href;
      this.setStatus(`Shared with ${user}: they open ${url} with their own login`);
    } catch (err) {
      await showErrorMessage('Not shared', errorMessage(err));
    }
  }

  async deleteDataset(d: IDataset): Promise<void> {
    const answer = await showDialog({
      title: 'Delete dataset',
      body: `Delete dataset "${d.name}" (all ${d.versions.length} version(s))? The XNAT data stays untouched.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.datasets.remove(d.name);
      this.setStatus(`Dataset "${d.name}" deleted`);
    } catch (err) {
      await showErrorMessage('Dataset not deleted', errorMessage(err));
    }
  }

  dispose(): void {
    this.poller.dispose();
    super.dispose();
  }

  render(): JSX.Element {
    return <PanelView panel={this} />;
  }
}
