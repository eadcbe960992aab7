"""A Griffe extension (mkdocs.yml, mkdocstrings' `extensions`) for Keras-style docstrings
of the names the package exports.

- The "Call arguments:" section, which the Google style does not know (Griffe would render
  it as a block of plain text), becomes a table like "Args:", of the arguments of the
  class's `call` with their defaults from its signature.
- "Example:", Keras's singular, is read as the Google style's "Examples:" (the `>>>`
  lines as code), not as a block of quoted text.
- An "Args:" entry naming several arguments (`kernel_initializer, recurrent_initializer,
  bias_initializer: ...`) becomes one row per argument.
- An argument taken through `**kwargs` (the recurrent cells pass theirs on to a base
  class) gets its default from the first `__init__` along the class's bases that names it;
  `*args` and `**kwargs` themselves show `()` and `{}`, as Griffe does, not "required".
- A class whose docstring is assembled at import time (`__doc__ = f"..."`, as the recurrent
  cells share their arguments' entries) has none in its source; it gets its runtime one.
- A class that inherits its `__init__` from Keras (`MaskedRNN`) gets the runtime
  signature, so that its page shows the arguments and their defaults.
"""

from __future__ import annotations

import inspect
import textwrap

import griffe

_VARIADIC = (griffe.ParameterKind.var_positional, griffe.ParameterKind.var_keyword)


def _public_objects(pkg):
    """The classes and functions the package exports (its `__all__`)."""
    for name in pkg.exports or ():
        member = pkg.members.get(name)
        target = member.final_target if member is not None and member.is_alias else member
        if target is not None and (target.is_class or target.is_function):
            yield target


def _init_parameters(cls):
    """The `__init__` parameters of `cls` and its bases, nearest first."""
    for klass in (cls, *cls.mro()):
        init = klass.members.get("__init__")
        if init is not None and not init.is_alias and init.is_function:
            yield init.parameters


def _default(name, parameter_lists):
    for parameters in parameter_lists:
        if name in parameters and parameters[name].kind not in _VARIADIC:
            return parameters[name].default
    return None


def _rows(parameter, parameter_lists):
    """One row per name of an entry; defaults filled from `parameter_lists`."""
    names = [name.strip() for name in parameter.name.split(",")]
    rows = []
    for name in names:
        default = parameter.value if len(names) == 1 else None
        if default is None:
            default = _default(name, parameter_lists)
        if default is None and name.startswith("*"):
            default = "{}" if name.startswith("**") else "()"
        rows.append(
            griffe.DocstringParameter(
                name=name, value=default, annotation=parameter.annotation, description=parameter.description
            )
        )
    return rows


def _section(contents, title, kind, parent, docstring):
    """`contents` parsed as the body of a section titled `title`, or None if it is not one
    section of `kind`."""
    # A summary line first: a docstring's value is cleaned as `inspect.cleandoc` does,
    # which would dedent the section's body were the title the first line.
    parsed = griffe.Docstring(
        f"Summary.\n\n{title}:\n" + textwrap.indent(contents, "    "),
        parent=parent,
        parser=docstring.parser,
        parser_options=docstring.parser_options,
    ).parsed
    if [s.kind for s in parsed] != [griffe.DocstringSectionKind.text, kind]:
        return None
    return parsed[1]


def _call_arguments(section, cls, docstring):
    """The admonition's text as the "Args:" of `cls.call`, or None if it has no `call`."""
    call = cls.all_members.get("call")
    if call is None:
        call = _runtime_function(cls, "call")
    if call is None or not call.is_function:
        return None
    params = _section(section.value.contents, "Args", griffe.DocstringSectionKind.parameters, call, docstring)
    if params is None:
        return None
    rows = [row for p in params.value for row in _rows(p, [call.parameters])]
    return griffe.DocstringSectionParameters(rows, title="Call arguments:")


def _example(section, obj, docstring):
    examples = _section(section.value.contents, "Examples", griffe.DocstringSectionKind.examples, obj, docstring)
    if examples is not None:
        examples.title = "Example:"
    return examples


def _runtime_docstring(cls, loader):
    doc = getattr(griffe.dynamic_import(cls.path), "__doc__", None)
    if not doc:
        return None
    return griffe.Docstring(
        inspect.cleandoc(doc), parent=cls, parser=loader.docstring_parser, parser_options=loader.docstring_options
    )


def _runtime_function(cls, name):
    """The method `name` of the runtime class, inherited from outside the package (Keras),
    as a Griffe function with the runtime signature; None if there is none."""
    method = getattr(griffe.dynamic_import(cls.path), name, None)
    if method is None:
        return None
    parameters = []
    for parameter in inspect.signature(method).parameters.values():
        default = None if parameter.default is parameter.empty else repr(parameter.default)
        kind = griffe.ParameterKind(parameter.kind.description)
        parameters.append(griffe.Parameter(parameter.name, kind=kind, default=default))
    function = griffe.Function(name, parameters=griffe.Parameters(*parameters))
    function.parent = cls
    return function


class KerasDocstrings(griffe.Extension):
    def on_package(self, *, pkg, loader, **kwargs):
        for obj in _public_objects(pkg):
            if obj.is_class:
                if obj.docstring is None:
                    obj.docstring = _runtime_docstring(obj, loader)
                if not list(_init_parameters(obj)):
                    obj.set_member("__init__", _runtime_function(obj, "__init__"))
                parameter_lists = list(_init_parameters(obj))
            else:
                parameter_lists = [obj.parameters]
            if obj.docstring is None:
                continue
            sections = obj.docstring.parsed
            for index, section in enumerate(sections):
                replacement = None
                if section.kind is griffe.DocstringSectionKind.parameters:
                    section.value = [row for p in section.value for row in _rows(p, parameter_lists)]
                elif section.kind is griffe.DocstringSectionKind.admonition:
                    title = (section.title or "").lower()
                    if title == "call arguments" and obj.is_class:
                        replacement = _call_arguments(section, obj, obj.docstring)
                    elif title == "example":
                        replacement = _example(section, obj, obj.docstring)
                if replacement is not None:
                    sections[index] = replacement
