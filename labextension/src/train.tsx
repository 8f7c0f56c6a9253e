/**
 * "Train on secure HPC…": a dialog with dataset, script, partition and
 * resources within the admin's limits. Submit validates on the client, sends
 * one client_token per dialog (a double click or a retry creates one job) and
 * stays disabled while the request is in flight.
 */
import { Dialog, ReactWidget } from '@jupyterlab/apputils';
import * as React from 'react';

import { XnatHpcClient } from './api';
import { formatMemory, formatWalltime } from './format';
import { IJob, ILimits, IScript } from './types';
import { SubmitController } from './submit';
import { defaultForm, FormErrors, ISubmitForm, validateForm } from './validate';

interface IFieldProps {
  id: keyof ISubmitForm;
  label: string;
  hint?: string;
  error?: string;
  children: React.ReactElement;
}

function Field(props: IFieldProps): JSX.Element {
  return (
    <div className="xnat-hpc-field">
      <label htmlFor={`xnat-hpc-train-${props.id}`}>{props.label}</label>
      {props.children}
      {props.hint && <span className="xnat-hpc-hint">{props.hint}</span>}
      {props.error && (
        <span className="xnat-hpc-error" role="alert" id={`xnat-hpc-train-${props.id}-error`}>
          {props.error}
        </span>
      )}
    </div>
  );
}

/** The dialog body: a controlled form. */
export class TrainForm extends ReactWidget implements Dialog.IBodyWidget<ISubmitForm> {
  form: ISubmitForm;
  errors: FormErrors = {};
  serverError: string | null = null;
  busy = false;

  constructor(
    readonly limits: ILimits,
    readonly datasets: string[],
    readonly scripts: IScript[],
    initial: { script?: string; dataset?: string }
  ) {
    super();
    this.addClass('xnat-hpc-train');
    this.form = defaultForm(limits, {
      script: initial.script,
      dataset: initial.dataset || (datasets.length === 1 ? datasets[0] : '')
    });
  }

  getValue(): ISubmitForm {
    return { ...this.form };
  }

  /** Set a field and check it at once (the dialog also disables Submit while an input is :invalid). */
  private set(key: keyof ISubmitForm, value: string): void {
    this.form = { ...this.form, [key]: value };
    const problem = validateForm(this.form, this.limits, this.datasets).errors[key];
    this.errors = { ...this.errors, [key]: problem };
    this.update();
  }

  render(): JSX.Element {
    const { limits, form, errors } = this;
    const partitions = limits.partitions && limits.partitions.length ? limits.partitions : [limits.partition];
    const input = (key: keyof ISubmitForm, extra: React.InputHTMLAttributes<HTMLInputElement> = {}): JSX.Element => (
      <input
        id={`xnat-hpc-train-${key}`}
        name={key}
        className="jp-mod-styled"
        value={form[key]}
        disabled={this.busy}
        aria-invalid={!!errors[key]}
        aria-describedby={errors[key] ? `xnat-hpc-train-${key}-error` : undefined}
        onChange={e => this.set(key, e.currentTarget.value)}
        {...extra}
      />
    );
    const scriptKnown = this.scripts.some(s => s.path === form.script);
    return (
      <form className="xnat-hpc-train-form" onSubmit={e => e.preventDefault()} aria-label="Train on secure HPC">
        <Field id="dataset" label="Dataset" error={errors.dataset}>
          <select
            id="xnat-hpc-train-dataset"
            className="jp-mod-styled"
            value={form.dataset}
            disabled={this.busy}
            onChange={e => this.set('dataset', e.currentTarget.value)}
          >
            <option value="">{this.datasets.length ? '— choose a dataset —' : '— no dataset yet —'}</option>
            {this.datasets.map(d => (
              <option key={d} value={d}>
                {d}
              </option>
            ))}
          </select>
        </Field>
        <Field id="script" label="Training script" hint="a .py file in your workspace" error={errors.script}>
          {this.scripts.length && (scriptKnown || !form.script) ? (
            <select
              id="xnat-hpc-train-script"
              className="jp-mod-styled"
              value={form.script}
              disabled={this.busy}
              onChange={e => this.set('script', e.currentTarget.value)}
            >
              <option value="">— choose a script —</option>
              {this.scripts.map(s => (
                <option key={s.path} value={s.path}>
                  {s.path}
                </option>
              ))}
            </select>
          ) : (
            input('script', { placeholder: 'train.py' })
          )}
        </Field>
        <Field id="partition" label="Partition" error={errors.partition}>
          <select
            id="xnat-hpc-train-partition"
            className="jp-mod-styled"
            value={form.partition}
            disabled={this.busy}
            onChange={e => this.set('partition', e.currentTarget.value)}
          >
            {partitions.map(p => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </Field>
        <Field id="cpus" label="CPUs" hint={limits.max_cpus ? `max ${limits.max_cpus}` : undefined} error={errors.cpus}>
          {input('cpus', { type: 'number', min: 1, max: limits.max_cpus ?? undefined, step: 1 })}
        </Field>
        <Field id="memory" label="Memory" hint={limits.max_memory ? `e.g. 4G; max ${formatMemory(limits.max_memory)}` : 'e.g. 4G'} error={errors.memory}>
          {input('memory')}
        </Field>
        <Field id="gpus" label="GPUs" hint={limits.max_gpus !== null ? `max ${limits.max_gpus}` : undefined} error={errors.gpus}>
          {input('gpus', { type: 'number', min: 0, max: limits.max_gpus ?? undefined, step: 1 })}
        </Field>
        <Field id="walltime" label="Walltime" hint={limits.max_walltime ? `H:MM:SS; max ${formatWalltime(limits.max_walltime)}` : 'H:MM:SS'} error={errors.walltime}>
          {input('walltime')}
        </Field>
        {this.serverError && (
          <div className="xnat-hpc-error" role="alert" data-testid="xnat-hpc-train-error">
            {this.serverError}
          </div>
        )}
        {this.busy && <div className="xnat-hpc-status">Submitting…</div>}
      </form>
    );
  }
}

/**
 * A Dialog whose Submit (click or Enter) validates and posts before closing;
 * it resolves only once the server has the job. `launch()` resolves with the
 * job in `value` on success (button.accept), or a cancel.
 */
export class TrainDialog extends Dialog<ISubmitForm> {
  readonly controller: SubmitController;
  job: IJob | null = null;

  constructor(
    client: XnatHpcClient,
    private readonly formBody: TrainForm
  ) {
    super({
      title: 'Train on secure HPC',
      body: formBody,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit', ariaLabel: 'Submit training job' })],
      focusNodeSelector: 'select, input'
    });
    this.addClass('xnat-hpc-train-dialog');
    const submit = this.node.querySelector('.jp-Dialog-footer .jp-mod-accept');
    if (submit) {
      submit.setAttribute('data-testid', 'xnat-hpc-submit');
      submit.id = 'xnat-hpc-submit';
    }
    this.controller = new SubmitController(
      request => client.submit(request),
      busy => {
        formBody.busy = busy;
        const btn = this.node.querySelector<HTMLButtonElement>('[data-testid="xnat-hpc-submit"]');
        if (btn) {
          btn.disabled = busy;
        }
        formBody.update();
      }
    );
  }

  /** Cancel (index 0) closes unless a request is in flight; Submit and Enter post first. */
  resolve(index?: number): void {
    if (index === 0) {
      if (!this.controller.inFlight) {
        super.resolve(0);
      }
      return;
    }
    void this.submit();
  }

  async submit(): Promise<void> {
    const body = this.formBody;
    body.serverError = null;
    const outcome = await this.controller.submit(body.form, body.limits, body.datasets);
    switch (outcome.kind) {
      case 'ignored':
        return;
      case 'invalid':
        body.errors = outcome.errors;
        break;
      case 'failed':
        body.serverError = outcome.message;
        break;
      case 'submitted':
        this.job = outcome.job;
        super.resolve(1);
        return;
    }
    body.update();
  }
}

/** Fetch what the dialog needs, run it; resolves with the submitted job or null. */
export async function runTrainDialog(
  client: XnatHpcClient,
  initial: { script?: string; dataset?: string }
): Promise<IJob | null> {
  const [limits, datasets, scripts] = await Promise.all([
    client.limits(),
    client.datasets(),
    client.scripts().catch(() => ({ items: [] as IScript[] }))
  ]);
  const body = new TrainForm(
    limits,
    datasets.items.map(d => d.name),
    scripts.items,
    initial
  );
  const dialog = new TrainDialog(client, body);
  const result = await dialog.launch();
  return result.button.accept ? dialog.job : null;
}
