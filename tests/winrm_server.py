"""A WS-Management server on 127.0.0.1 that answers the remote shell exchange pywinrm sends
(winrm/protocol.py: Create a cmd shell, Command, Receive until Done, Signal terminate,
Delete), with HTTP Basic authentication as Windows' WinRM service does it over HTTP. It runs no
commands: a test's `program` says what a command prints, chunk by chunk. Each request is
checked as WinRM would (the resource URI, the shell and command ids it handed out), and every
request is recorded for the test to look at."""
from __future__ import annotations

import base64
import http.server
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Iterator

SOAP = "http://www.w3.org/2003/05/soap-envelope"
ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
FAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
CMD_URI = f"{SHELL}/cmd"
DONE = f"{SHELL}/CommandState/Done"
RUNNING = f"{SHELL}/CommandState/Running"
TERMINATE = f"{SHELL}/signal/terminate"
OPERATION_TIMED_OUT = 2150858793  # what WinRM says when a Receive saw no output in OperationTimeout
TIMEOUT = "timeout"  # a Receive answered with that fault


@dataclass(frozen=True)
class Chunk:
    """One Receive's answer: output so far, and the exit code once the command is done."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None  # None: still running


Reply = list["Chunk | str"]  # Chunk or TIMEOUT; the last one repeats once the list is used up
Program = Callable[[str, list[str]], Reply]  # (command, arguments) -> what it prints


def encoded_script(arguments: list[str]) -> str | None:
    """The PowerShell script of `powershell.exe ... -EncodedCommand B64` (UTF-16-LE)."""
    lowered = [a.lower() for a in arguments]
    if "-encodedcommand" not in lowered:
        return None
    return base64.b64decode(arguments[lowered.index("-encodedcommand") + 1]).decode("utf-16-le")


@dataclass
class Request:
    action: str  # the last part of the WS-Addressing action: Create, Command, Receive, Signal, Delete
    shell: str | None
    body: ET.Element = field(repr=False)


class WinrmServer:
    def __init__(self, user: str, password: str, program: Program, refuse: int = 0,
                 fault: tuple[int, str] | None = None) -> None:
        """`refuse`: the first so many requests get 401 whatever their credentials (the account
        does not exist yet); `fault`: every Create gets this (HTTP status, reason) as a SOAP fault."""
        self.user, self.password, self.program = user, password, program
        self.refuse, self.fault = refuse, fault
        self.requests: list[Request] = []
        self.refused = 0
        self.shells: set[str] = set()
        self.commands: dict[str, tuple[str, list[str], Iterator[Chunk | str]]] = {}
        self.signals: list[tuple[str, str]] = []  # (command id, signal code)
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as WinRM: requests reuses the connection

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, text = server.answer(self.headers.get("Authorization", ""), body)
                data = text.encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
                self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "WinrmServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def actions(self) -> list[str]:
        with self.lock:
            return [r.action for r in self.requests]

    # --- the exchange -------------------------------------------------------------------------

    def answer(self, authorization: str, body: bytes) -> tuple[int, str]:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        with self.lock:
            if self.refused < self.refuse or authorization != expected:
                self.refused += 1
                return 401, ""
        root = ET.fromstring(body)
        header = root.find(f"{{{SOAP}}}Header")
        assert header is not None, "no SOAP header"
        action = header.findtext(f"{{{ADDRESSING}}}Action") or ""
        message_id = header.findtext(f"{{{ADDRESSING}}}MessageID") or ""
        resource = header.findtext(f"{{{WSMAN}}}ResourceURI")
        shell = next((s.text for s in header.iter(f"{{{WSMAN}}}Selector") if s.get("Name") == "ShellId"), None)
        kind = action.rsplit("/", 1)[-1]
        with self.lock:
            self.requests.append(Request(kind, shell, root))
        if resource != CMD_URI:
            return 500, fault_envelope(message_id, "w:InvalidResourceURI", f"unknown resource {resource}", 2150858770)
        if kind != "Create" and shell not in self.shells:
            return 500, fault_envelope(message_id, "w:InvalidSelectors", f"no shell {shell}", 2150858843)
        body_el = root.find(f"{{{SOAP}}}Body")
        assert body_el is not None
        return getattr(self, "_" + kind.lower())(message_id, shell, body_el)

    def _create(self, message_id: str, shell: str | None, body: ET.Element) -> tuple[int, str]:
        if self.fault:
            status, reason = self.fault
            return status, fault_envelope(message_id, "w:AccessDenied", reason, 5)
        assert body.find(f"{{{SHELL}}}Shell/{{{SHELL}}}InputStreams") is not None
        new = str(uuid.uuid4()).upper()
        with self.lock:
            self.shells.add(new)
        created = ET.Element(f"{{{TRANSFER}}}ResourceCreated")
        ET.SubElement(created, f"{{{ADDRESSING}}}Address").text = f"http://127.0.0.1:{self.port}/wsman"
        reference = ET.SubElement(created, f"{{{ADDRESSING}}}ReferenceParameters")
        ET.SubElement(reference, f"{{{WSMAN}}}ResourceURI").text = CMD_URI
        selectors = ET.SubElement(reference, f"{{{WSMAN}}}SelectorSet")
        ET.SubElement(selectors, f"{{{WSMAN}}}Selector", Name="ShellId").text = new
        return 200, envelope(message_id, f"{TRANSFER}/CreateResponse", created)

    def _command(self, message_id: str, shell: str | None, body: ET.Element) -> tuple[int, str]:
        line = body.find(f"{{{SHELL}}}CommandLine")
        assert line is not None
        command = line.findtext(f"{{{SHELL}}}Command") or ""
        arguments = (line.findtext(f"{{{SHELL}}}Arguments") or "").split()
        reply = self.program(command, arguments)
        command_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.commands[command_id] = (command, arguments, _repeat_last(reply))
        response = ET.Element(f"{{{SHELL}}}CommandResponse")
        ET.SubElement(response, f"{{{SHELL}}}CommandId").text = command_id
        return 200, envelope(message_id, f"{SHELL}/CommandResponse", response)

    def _receive(self, message_id: str, shell: str | None, body: ET.Element) -> tuple[int, str]:
        stream = body.find(f"{{{SHELL}}}Receive/{{{SHELL}}}DesiredStream")
        assert stream is not None and stream.text == "stdout stderr"
        command_id = stream.get("CommandId") or ""
        if command_id not in self.commands:
            return 500, fault_envelope(message_id, "w:InvalidSelectors", f"no command {command_id}", 2150858843)
        chunk = next(self.commands[command_id][2])
        if chunk == TIMEOUT:
            return 500, fault_envelope(message_id, "w:TimedOut", "The WS-Management service cannot complete the "
                                       "operation within the time specified in OperationTimeout.", OPERATION_TIMED_OUT)
        assert isinstance(chunk, Chunk)
        response = ET.Element(f"{{{SHELL}}}ReceiveResponse")
        for name, data in (("stdout", chunk.stdout), ("stderr", chunk.stderr)):
            if data:
                ET.SubElement(response, f"{{{SHELL}}}Stream", Name=name, CommandId=command_id).text = \
                    base64.b64encode(data).decode()
            if chunk.exit_code is not None:
                ET.SubElement(response, f"{{{SHELL}}}Stream", Name=name, CommandId=command_id, End="true")
        state = ET.SubElement(response, f"{{{SHELL}}}CommandState", CommandId=command_id,
                              State=RUNNING if chunk.exit_code is None else DONE)
        if chunk.exit_code is not None:
            ET.SubElement(state, f"{{{SHELL}}}ExitCode").text = str(chunk.exit_code)
        return 200, envelope(message_id, f"{SHELL}/ReceiveResponse", response)

    def _signal(self, message_id: str, shell: str | None, body: ET.Element) -> tuple[int, str]:
        signal = body.find(f"{{{SHELL}}}Signal")
        assert signal is not None
        with self.lock:
            self.signals.append((signal.get("CommandId") or "", signal.findtext(f"{{{SHELL}}}Code") or ""))
        return 200, envelope(message_id, f"{SHELL}/SignalResponse", ET.Element(f"{{{SHELL}}}SignalResponse"))

    def _delete(self, message_id: str, shell: str | None, body: ET.Element) -> tuple[int, str]:
        with self.lock:
            self.shells.discard(shell or "")
        return 200, envelope(message_id, f"{TRANSFER}/DeleteResponse", None)


def _repeat_last(reply: Reply) -> Iterator[Chunk | str]:
    assert reply, "a command prints at least one chunk"
    yield from reply
    while True:
        yield reply[-1]


def envelope(relates_to: str, action: str, content: ET.Element | None) -> str:
    root = ET.Element(f"{{{SOAP}}}Envelope")
    header = ET.SubElement(root, f"{{{SOAP}}}Header")
    ET.SubElement(header, f"{{{ADDRESSING}}}To").text = f"{ADDRESSING}/role/anonymous"
    ET.SubElement(header, f"{{{ADDRESSING}}}Action").text = action
    ET.SubElement(header, f"{{{ADDRESSING}}}MessageID").text = f"uuid:{uuid.uuid4()}"
    ET.SubElement(header, f"{{{ADDRESSING}}}RelatesTo").text = relates_to
    body = ET.SubElement(root, f"{{{SOAP}}}Body")
    if content is not None:
        body.append(content)
    return ET.tostring(root, encoding="unicode")


def fault_envelope(relates_to: str, subcode: str, reason: str, code: int) -> str:
    fault = ET.Element(f"{{{SOAP}}}Fault")
    codes = ET.SubElement(fault, f"{{{SOAP}}}Code")
    ET.SubElement(codes, f"{{{SOAP}}}Value").text = "s:Receiver"
    ET.SubElement(ET.SubElement(codes, f"{{{SOAP}}}Subcode"), f"{{{SOAP}}}Value").text = subcode
    ET.SubElement(ET.SubElement(fault, f"{{{SOAP}}}Reason"), f"{{{SOAP}}}Text").text = reason
    detail = ET.SubElement(fault, f"{{{SOAP}}}Detail")
    ET.SubElement(ET.SubElement(detail, f"{{{FAULT}}}WSManFault", Code=str(code), Machine="proof"),
                  f"{{{FAULT}}}Message").text = reason
    return envelope(relates_to, f"{ADDRESSING}/fault", fault)
