import { AdminGenericStatus, AdminStatusType } from '../protocol/admin-command.js';
import { AdminRecordError, adminClassName, adminCommandName, type AdminCommandId } from '../protocol/admin-records.js';
import type { AdminRequest, AdminResponse } from './header-format.js';

/** What a command handler answers: a result record and, unless OK, a status of any type. */
export interface AdminReply {
  readonly result?: Buffer;
  readonly statusType?: number;
  readonly status?: number;
}

export type AdminHandler = (data: Buffer) => AdminReply | Promise<AdminReply>;

/** Thrown by a handler whose command-specific data is malformed: DATA_TRANSFER_ERR. */
export class AdminDataError extends Error {}

export const generic = (status: number): AdminReply => ({ statusType: AdminStatusType.GENERIC, status });

/** Require exactly `bytes` of command-specific data. */
export function expectData(data: Buffer, bytes: number, what: string): void {
  if (data.length !== bytes) throw new AdminDataError(`${what} takes ${bytes} bytes of data, got ${data.length}`);
}

/**
 * The admin commands one device instance serves, by class and command number. The target core
 * registers the common, transport and vendor classes; devices register their own class.
 */
export class AdminCommandSet {
  private readonly classes = new Map<number, Map<number, AdminHandler>>();

  add(cls: number, command: number, handler: AdminHandler): void {
    let commands = this.classes.get(cls);
    if (!commands) this.classes.set(cls, (commands = new Map()));
    if (commands.has(command)) throw new Error(`admin ${adminClassName(cls)} ${adminCommandName(cls, command)} registered twice`);
    commands.set(command, handler);
  }

  list(): AdminCommandId[] {
    const out: AdminCommandId[] = [];
    for (const [cls, commands] of [...this.classes].sort((a, b) => a[0] - b[0])) {
      for (const command of [...commands.keys()].sort((a, b) => a - b)) out.push({ cls, command });
    }
    return out;
  }

  /**
   * Run one command. Never throws: an unknown class or command, malformed data, a result larger
   * than `resultCapacity` and a handler failure each become the seed's generic status.
   * `onInternalError` hears about the last (the device's log).
   */
  async run(req: AdminRequest, resultCapacity: number, onInternalError: (err: Error) => void): Promise<AdminResponse> {
    const commands = this.classes.get(req.cls);
    const handler = commands?.get(req.command);
    let reply: AdminReply;
    if (!commands) reply = generic(AdminGenericStatus.INVALID_CLASS);
    else if (!handler) reply = generic(AdminGenericStatus.INVALID_COMMAND);
    else {
      try {
        reply = await handler(req.data);
      } catch (err) {
        if (err instanceof AdminDataError || err instanceof AdminRecordError) reply = generic(AdminGenericStatus.DATA_TRANSFER_ERR);
        else {
          onInternalError(err as Error);
          reply = generic(AdminGenericStatus.DEVICE_INTERNAL_ERR);
        }
      }
    }
    const result = reply.result ?? Buffer.alloc(0);
    if (result.length > resultCapacity) {
      // Too small a buffer: say how much the result needs, where there is room to.
      const needed = Buffer.alloc(Math.min(4, Math.max(0, resultCapacity)));
      if (needed.length === 4) needed.writeUInt32LE(result.length, 0);
      return { result: needed, statusType: AdminStatusType.GENERIC, status: AdminGenericStatus.DATA_TRANSFER_ERR };
    }
    return { result, statusType: reply.statusType ?? AdminStatusType.GENERIC, status: reply.status ?? AdminGenericStatus.OK };
  }
}
