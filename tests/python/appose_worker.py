"""A small, faithful re-implementation of the Appose Python worker
(appose.python_worker), used to prove that Tessera runs inside an unmodified
Appose worker. What it keeps from the original:

- requests are JSON lines on stdin (EXECUTE with script + inputs, CANCEL); a blank
  line or EOF ends the main loop;
- each EXECUTE runs on its own thread with `task` and the inputs in scope; the value
  of a final expression (or task.outputs) is the result;
- responses are JSON lines printed on stdout: LAUNCH, UPDATE (message, current,
  maximum), COMPLETION (outputs), CANCELATION, FAILURE (error = traceback);
- CANCEL only sets task.cancel_requested; the script decides what to do;
- the worker owns stdout: nothing redirects user prints.
"""

import ast
import json
import sys
import threading
import traceback


def _respond(uuid, response_type, args=None):
    response = {"task": uuid, "responseType": response_type}
    if args:
        response.update(args)
    with _lock:
        print(json.dumps(response))
        sys.stdout.flush()


_lock = threading.Lock()


class Task:
    def __init__(self, uuid, script, inputs):
        self.uuid = uuid
        self.script = script
        self.inputs = inputs or {}
        self.outputs = {}
        self.cancel_requested = False
        self.finished = False

    def update(self, message=None, current=None, maximum=None):
        args = {}
        if message is not None:
            args["message"] = str(message)
        if current is not None:
            args["current"] = int(current)
        if maximum is not None:
            args["maximum"] = int(maximum)
        self._respond("UPDATE", args)

    def cancel(self):
        self._respond("CANCELATION")

    def fail(self, error=None):
        self._respond("FAILURE", {"error": error} if error else None)

    def _respond(self, response_type, args=None):
        if self.finished:
            return  # a terminated task reports nothing more
        if response_type in ("COMPLETION", "CANCELATION", "FAILURE"):
            self.finished = True
        _respond(self.uuid, response_type, args)

    def _start(self):
        def execute_script():
            binding = {"task": self}
            binding.update(self.inputs)
            self._respond("LAUNCH")
            try:
                block = ast.parse(self.script, mode="exec")
                last = None
                if block.body and isinstance(block.body[-1], ast.Expr):
                    last = ast.Expression(block.body.pop().value)
                _globals = {}
                _globals.update(binding)
                exec(compile(block, "<string>", mode="exec"), _globals)
                result = eval(compile(last, "<string>", mode="eval"), _globals) if last is not None else None
                if result is not None:
                    self.outputs["result"] = result
                self._respond("COMPLETION", {"outputs": self.outputs})
            except BaseException:
                self.fail(traceback.format_exc())

        threading.Thread(target=execute_script, name=f"Appose-{self.uuid}").start()


def main():
    tasks = {}
    while True:
        try:
            line = input().strip()
        except EOFError:
            break
        if not line:
            break
        request = json.loads(line)
        uuid = request.get("task")
        kind = request.get("requestType")
        if kind == "EXECUTE":
            task = Task(uuid, request.get("script"), request.get("inputs"))
            tasks[uuid] = task
            task._start()
        elif kind == "CANCEL":
            task = tasks.get(uuid)
            if task is None:
                print(f"No such task: {uuid}", file=sys.stderr)
                continue
            task.cancel_requested = True


if __name__ == "__main__":
    main()
