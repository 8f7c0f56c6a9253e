/**
 * xnat-hpc-hub's JupyterLab 4 extension: the "XNAT" side panel (browser,
 * datasets, jobs), the "Train on secure HPC…" command (palette and the file
 * browser's context menu on .py files), and job details in the main area.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, showErrorMessage, WidgetTracker } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';

import { errorMessage, XnatHpcClient } from './api';
import { JobDetails } from './details';
import { xnatIcon } from './icons';
import { XnatPanel } from './panel';
import { runTrainDialog } from './train';

export namespace CommandIDs {
  export const train = 'xnat-hpc:train';
  export const jobs = 'xnat-hpc:jobs';
  export const openJob = 'xnat-hpc:open-job';
  export const panel = 'xnat-hpc:open-panel';
}

/** The context menu selector for Python files in the file browser. */
export const PY_FILE_SELECTOR = '.jp-DirListing-item[data-file-type="python"]';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'xnat-hpc-hub:plugin',
  description: 'XNAT browser, datasets and secure HPC training jobs',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, IDefaultFileBrowser, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    browser: IDefaultFileBrowser | null
  ) => {
    const client = new XnatHpcClient();
    const tracker = new WidgetTracker<MainAreaWidget<JobDetails>>({ namespace: 'xnat-hpc-job' });

    const panel = new XnatPanel({
      client,
      openJob: id => void app.commands.execute(CommandIDs.openJob, { id }),
      train: dataset => void app.commands.execute(CommandIDs.train, dataset ? { dataset } : {})
    });
    panel.title.icon = xnatIcon;
    panel.title.label = '';
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, 'xnat-hpc-panel');
    }

    const openResults = async (path: string): Promise<void> => {
      await app.commands.execute('filebrowser:go-to-path', { path });
    };

    app.commands.addCommand(CommandIDs.openJob, {
      label: 'Open XNAT HPC job',
      execute: args => {
        const id = String(args.id || '');
        const existing = tracker.find(w => w.content.jobId === id);
        if (existing) {
          app.shell.activateById(existing.id);
          return existing;
        }
        const content = new JobDetails(id, client, openResults, job => panel.jobs.upsert(job));
        const widget = new MainAreaWidget({ content });
        widget.id = `xnat-hpc-job-${id}`;
        widget.title.label = `Job ${id}`;
        widget.title.icon = xnatIcon;
        widget.title.closable = true;
        void tracker.add(widget);
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
        return widget;
      }
    });
    if (restorer) {
      void restorer.restore(tracker, {
        command: CommandIDs.openJob,
        args: w => ({ id: w.content.jobId }),
        name: w => w.content.jobId
      });
    }

    app.commands.addCommand(CommandIDs.train, {
      label: 'Train on secure HPC…',
      caption: 'Submit a training script on an XNAT dataset to the secure Slurm partition',
      icon: args => (args.isPalette ? undefined : xnatIcon),
      execute: async args => {
        let script = typeof args.path === 'string' ? args.path : undefined;
        if (!script && browser && !args.isPalette) {
          // from the file browser's context menu: the item that was right-clicked is selected
          const item = Array.from(browser.selectedItems()).find(i => i.type !== 'directory' && i.path.endsWith('.py'));
          script = item ? item.path : undefined;
        }
        try {
          const job = await runTrainDialog(client, {
            script,
            dataset: typeof args.dataset === 'string' ? args.dataset : undefined
          });
          if (job) {
            panel.jobs.upsert(job);
            void panel.poller.refresh();
            await app.commands.execute(CommandIDs.openJob, { id: job.id });
          }
        } catch (err) {
          await showErrorMessage('Cannot open the training dialog', errorMessage(err));
        }
      }
    });

    app.commands.addCommand(CommandIDs.jobs, {
      label: 'Show XNAT HPC jobs',
      execute: () => {
        app.shell.activateById(panel.id);
        panel.node.querySelector('#xnat-hpc-jobs')?.scrollIntoView?.();
        void panel.poller.refresh();
      }
    });

    app.commands.addCommand(CommandIDs.panel, {
      label: 'Show the XNAT panel',
      execute: () => app.shell.activateById(panel.id)
    });

    app.contextMenu.addItem({ command: CommandIDs.train, selector: PY_FILE_SELECTOR, rank: 20 });

    if (palette) {
      const category = 'XNAT HPC';
      palette.addItem({ command: CommandIDs.train, category, args: { isPalette: true } });
      palette.addItem({ command: CommandIDs.jobs, category });
      palette.addItem({ command: CommandIDs.panel, category });
    }
  }
};

export default plugin;
