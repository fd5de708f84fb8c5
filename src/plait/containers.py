"""Containers with PyTorch semantics: children are registered under their
index or key, so parameters inside them get dotted names like ``steps.0.prompt``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, overload

from plait.module import Module, _StructureVersion, refuse_cycle
from plait.parameter import Parameter


def _check_module(value: Any, where: str) -> Module:
    if not isinstance(value, Module):
        raise TypeError(f"{where} holds Modules, got {type(value).__name__}")
    return value


def _check_parameter(value: Any, where: str) -> Parameter:
    if not isinstance(value, Parameter):
        raise TypeError(f"{where} holds Parameters, got {type(value).__name__}")
    return value


def _normalise_index(index: int, length: int, where: str) -> int:
    if not -length <= index < length:
        raise IndexError(f"{where} index {index} out of range for length {length}")
    return index % length


class Sequential(Module):
    """Feeds each module's output to the next."""

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            for name, module in modules[0].items():
                self.register_module(name, _check_module(module, "Sequential"))
        else:
            for index, child in enumerate(modules):
                self.register_module(str(index), _check_module(child, "Sequential"))

    def forward(self, value: Any) -> Any:
        for module in self._modules.values():
            value = module(value)
        return value

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        modules = list(self._modules.values())
        return modules[_normalise_index(index, len(modules), "Sequential")]


class ModuleList(Module):
    """A list of child modules, registered as ``"0"``, ``"1"``, ..."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _reindex(self, modules: list[Module]) -> None:
        self._modules.clear()
        for index, module in enumerate(modules):
            self._modules[str(index)] = module
        _StructureVersion.value += 1

    def append(self, module: Module) -> ModuleList:
        self.register_module(str(len(self._modules)), _check_module(module, "ModuleList"))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        refuse_cycle(self, str(index), _check_module(module, "ModuleList"))
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._reindex(modules)

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> ModuleList: ...
    def __getitem__(self, index: int | slice) -> Module | ModuleList:
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(modules[index])
        return modules[_normalise_index(index, len(modules), "ModuleList")]

    def __setitem__(self, index: int, module: Module) -> None:
        position = _normalise_index(index, len(self._modules), "ModuleList")
        self.register_module(str(position), _check_module(module, "ModuleList"))

    def __delitem__(self, index: int) -> None:
        modules = list(self._modules.values())
        del modules[_normalise_index(index, len(modules), "ModuleList")]
        self._reindex(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class ModuleDict(Module):
    """A mapping of names to child modules, in insertion order."""

    def __init__(self, modules: Mapping[str, Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def update(self, modules: Mapping[str, Module]) -> None:
        for key, module in modules.items():
            self[key] = module

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict keys must be str, got {type(key).__name__}")
        self.register_module(key, _check_module(module, "ModuleDict"))

    def __delitem__(self, key: str) -> None:
        del self._modules[key]
        _StructureVersion.value += 1

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def keys(self) -> list[str]:
        return list(self._modules)

    def values(self) -> list[Module]:
        return list(self._modules.values())

    def items(self) -> list[tuple[str, Module]]:
        return list(self._modules.items())


class ParameterList(Module):
    """A list of Parameters, registered as ``"0"``, ``"1"``, ..."""

    _plait_parameter_container = True

    def __init__(self, parameters: Iterable[Parameter] | None = None) -> None:
        super().__init__()
        if parameters is not None:
            for param in parameters:
                self.append(param)

    def append(self, param: Parameter) -> ParameterList:
        self.register_parameter(
            str(len(self._parameters)), _check_parameter(param, "ParameterList")
        )
        return self

    def __getitem__(self, index: int) -> Parameter:
        params = list(self._parameters.values())
        return params[_normalise_index(index, len(params), "ParameterList")]

    def __setitem__(self, index: int, param: Parameter) -> None:
        position = _normalise_index(index, len(self._parameters), "ParameterList")
        self.register_parameter(str(position), _check_parameter(param, "ParameterList"))

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self) -> Iterator[Parameter]:
        return iter(list(self._parameters.values()))


class ParameterDict(Module):
    """A mapping of names to Parameters, in insertion order."""

    _plait_parameter_container = True

    def __init__(self, parameters: Mapping[str, Parameter] | None = None) -> None:
        super().__init__()
        if parameters is not None:
            for key, param in parameters.items():
                self[key] = param

    def __getitem__(self, key: str) -> Parameter:
        return self._parameters[key]

    def __setitem__(self, key: str, param: Parameter) -> None:
        if not isinstance(key, str):
            raise TypeError(f"ParameterDict keys must be str, got {type(key).__name__}")
        self.register_parameter(key, _check_parameter(param, "ParameterDict"))

    def __delitem__(self, key: str) -> None:
        del self._parameters[key]
        _StructureVersion.value += 1

    def __contains__(self, key: object) -> bool:
        return key in self._parameters

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._parameters))

    def keys(self) -> list[str]:
        return list(self._parameters)

    def values(self) -> list[Parameter]:
        return list(self._parameters.values())

    def items(self) -> list[tuple[str, Parameter]]:
        return list(self._parameters.items())
