/* FMI 2.0 adapter (co-simulation and model exchange in one binary) over ecm_instance.c. */
#include <string.h>

#include "ecm_instance.h"
#include "fmi2Functions.h"

typedef struct {
    bt_instance model;
    fmi2CallbackFunctions callbacks;
    char *name;
    fmi2Boolean debug_logging;
} Component;

typedef struct {
    bt_snapshot saved;
    bt_mode mode;
} SavedState;

static void log_message(void *owner, bt_status status, const char *message) {
    Component *c = (Component *)owner;
    const char *category = status == BT_ERROR ? "logStatusError" : "logStatusWarning";
    if (status == BT_OK && !c->debug_logging) return;
    /* The message is already formatted and holds no '%'. */
    if (c->callbacks.logger) {
        c->callbacks.logger(c->callbacks.componentEnvironment, c->name, (fmi2Status)status,
                            category, message);
    }
}

static fmi2Status status_of(bt_status s) { return (fmi2Status)s; }

static Component *component(fmi2Component c) { return (Component *)c; }

static fmi2Status unsupported(fmi2Component c, const char *function) {
    return status_of(bt_fail(&component(c)->model,
                             "%s is not supported by this FMU (see modelDescription.xml)",
                             function));
}

/* ---------------------------------------------------------------- common functions */

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }

const char *fmi2GetVersion(void) { return fmi2Version; }

fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean loggingOn, size_t nCategories,
                               const fmi2String categories[]) {
    (void)nCategories;
    (void)categories;
    component(c)->debug_logging = loggingOn;
    return fmi2OK;
}

fmi2Component fmi2Instantiate(fmi2String instanceName, fmi2Type fmuType, fmi2String fmuGUID,
                              fmi2String fmuResourceLocation,
                              const fmi2CallbackFunctions *functions, fmi2Boolean visible,
                              fmi2Boolean loggingOn) {
    Component *c;
    const char *name = instanceName ? instanceName : "";
    (void)fmuResourceLocation;
    (void)visible;
    if (!functions || !functions->allocateMemory || !functions->freeMemory) return NULL;
    if (!fmuGUID || strcmp(fmuGUID, BT_INSTANTIATION_TOKEN) != 0) {
        if (functions->logger) {
            functions->logger(functions->componentEnvironment, name, fmi2Error,
                              "logStatusError",
                              "fmi2Instantiate: the GUID does not match this binary's "
                              "(modelDescription.xml and binary come from different exports)");
        }
        return NULL;
    }
    c = (Component *)functions->allocateMemory(1, sizeof(Component));
    if (!c) return NULL;
    c->callbacks = *functions;
    c->name = (char *)functions->allocateMemory(strlen(name) + 1, 1);
    if (!c->name) {
        functions->freeMemory(c);
        return NULL;
    }
    strcpy(c->name, name);
    c->debug_logging = loggingOn;
    bt_instance_setup(&c->model, fmuType == fmi2ModelExchange, log_message, c);
    return c;
}

void fmi2FreeInstance(fmi2Component c) {
    Component *comp = component(c);
    fmi2CallbackFreeMemory free_memory;
    if (!comp) return;
    free_memory = comp->callbacks.freeMemory;
    free_memory(comp->name);
    free_memory(comp);
}

fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean toleranceDefined,
                               fmi2Real tolerance, fmi2Real startTime,
                               fmi2Boolean stopTimeDefined, fmi2Real stopTime) {
    (void)toleranceDefined;
    (void)tolerance;
    (void)stopTimeDefined;
    (void)stopTime;
    component(c)->model.now.time_s = startTime;
    return fmi2OK;
}

fmi2Status fmi2EnterInitializationMode(fmi2Component c) {
    bt_instance *m = &component(c)->model;
    return status_of(bt_enter_initialization(m, m->now.time_s));
}

fmi2Status fmi2ExitInitializationMode(fmi2Component c) {
    return status_of(bt_exit_initialization(&component(c)->model));
}

fmi2Status fmi2Terminate(fmi2Component c) {
    component(c)->model.mode = BT_TERMINATED;
    return fmi2OK;
}

fmi2Status fmi2Reset(fmi2Component c) {
    bt_instance_defaults(&component(c)->model);
    return fmi2OK;
}

fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                       fmi2Real value[]) {
    size_t i;
    for (i = 0; i < nvr; i++) {
        if (bt_get_real(&component(c)->model, vr[i], &value[i]) != BT_OK) return fmi2Error;
    }
    return fmi2OK;
}

fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                       const fmi2Real value[]) {
    size_t i;
    for (i = 0; i < nvr; i++) {
        if (bt_set_real(&component(c)->model, vr[i], value[i]) != BT_OK) return fmi2Error;
    }
    return fmi2OK;
}

fmi2Status fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                          fmi2Integer value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2GetInteger (no Integer variables)");
}

fmi2Status fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                          fmi2Boolean value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2GetBoolean (no Boolean variables)");
}

fmi2Status fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                         fmi2String value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2GetString (no String variables)");
}

fmi2Status fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                          const fmi2Integer value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2SetInteger (no Integer variables)");
}

fmi2Status fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                          const fmi2Boolean value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2SetBoolean (no Boolean variables)");
}

fmi2Status fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                         const fmi2String value[]) {
    (void)vr;
    (void)value;
    return nvr == 0 ? fmi2OK : unsupported(c, "fmi2SetString (no String variables)");
}

/* A saved state is a copy of the instance's variables: cheap, so the FMU offers it. */
fmi2Status fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *FMUstate) {
    Component *comp = component(c);
    SavedState *s = (SavedState *)*FMUstate;
    if (!s) {
        s = (SavedState *)comp->callbacks.allocateMemory(1, sizeof(SavedState));
        if (!s) return status_of(bt_fail(&comp->model, "fmi2GetFMUstate: out of memory"));
    }
    s->saved = comp->model.now;
    s->mode = comp->model.mode;
    *FMUstate = s;
    return fmi2OK;
}

fmi2Status fmi2SetFMUstate(fmi2Component c, fmi2FMUstate FMUstate) {
    const SavedState *s = (const SavedState *)FMUstate;
    if (!s) return status_of(bt_fail(&component(c)->model, "fmi2SetFMUstate: no state given"));
    component(c)->model.now = s->saved;
    component(c)->model.mode = s->mode;
    return fmi2OK;
}

fmi2Status fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *FMUstate) {
    if (FMUstate && *FMUstate) {
        component(c)->callbacks.freeMemory(*FMUstate);
        *FMUstate = NULL;
    }
    return fmi2OK;
}

fmi2Status fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate FMUstate, size_t *size) {
    (void)c;
    (void)FMUstate;
    *size = sizeof(SavedState);
    return fmi2OK;
}

fmi2Status fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate FMUstate, fmi2Byte serializedState[],
                                 size_t size) {
    if (size != sizeof(SavedState)) {
        return status_of(bt_fail(&component(c)->model, "fmi2SerializeFMUstate: wrong size"));
    }
    memcpy(serializedState, FMUstate, sizeof(SavedState));
    return fmi2OK;
}

fmi2Status fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte serializedState[], size_t size,
                                   fmi2FMUstate *FMUstate) {
    Component *comp = component(c);
    SavedState *s;
    if (size != sizeof(SavedState)) {
        return status_of(bt_fail(&comp->model,
                                 "fmi2DeSerializeFMUstate: the state comes from another build"));
    }
    s = (SavedState *)*FMUstate;
    if (!s) s = (SavedState *)comp->callbacks.allocateMemory(1, sizeof(SavedState));
    if (!s) return status_of(bt_fail(&comp->model, "fmi2DeSerializeFMUstate: out of memory"));
    memcpy(s, serializedState, sizeof(SavedState));
    *FMUstate = s;
    return fmi2OK;
}

fmi2Status fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference vUnknown_ref[],
                                        size_t nUnknown, const fmi2ValueReference vKnown_ref[],
                                        size_t nKnown, const fmi2Real dvKnown[],
                                        fmi2Real dvUnknown[]) {
    (void)vUnknown_ref;
    (void)nUnknown;
    (void)vKnown_ref;
    (void)nKnown;
    (void)dvKnown;
    (void)dvUnknown;
    return unsupported(c, "fmi2GetDirectionalDerivative");
}

/* ---------------------------------------------------------------- model exchange */

fmi2Status fmi2EnterEventMode(fmi2Component c) {
    component(c)->model.mode = BT_EVENT;
    return fmi2OK;
}

fmi2Status fmi2NewDiscreteStates(fmi2Component c, fmi2EventInfo *eventInfo) {
    bt_note_direction(&component(c)->model);
    eventInfo->newDiscreteStatesNeeded = fmi2False;
    eventInfo->terminateSimulation = fmi2False;
    eventInfo->nominalsOfContinuousStatesChanged = fmi2False;
    eventInfo->valuesOfContinuousStatesChanged = fmi2False;
    eventInfo->nextEventTimeDefined = fmi2False;
    eventInfo->nextEventTime = 0.0;
    return fmi2OK;
}

fmi2Status fmi2EnterContinuousTimeMode(fmi2Component c) {
    component(c)->model.mode = BT_CONTINUOUS_TIME;
    return fmi2OK;
}

fmi2Status fmi2CompletedIntegratorStep(fmi2Component c,
                                       fmi2Boolean noSetFMUStatePriorToCurrentPoint,
                                       fmi2Boolean *enterEventMode,
                                       fmi2Boolean *terminateSimulation) {
    (void)noSetFMUStatePriorToCurrentPoint;
    /* The direction memory is a discrete state; an accepted step is where it may change. */
    bt_note_direction(&component(c)->model);
    *enterEventMode = fmi2False;
    *terminateSimulation = fmi2False;
    return fmi2OK;
}

fmi2Status fmi2SetTime(fmi2Component c, fmi2Real time) {
    component(c)->model.now.time_s = time;
    return fmi2OK;
}

fmi2Status fmi2SetContinuousStates(fmi2Component c, const fmi2Real x[], size_t nx) {
    return status_of(bt_set_states(&component(c)->model, x, nx));
}

fmi2Status fmi2GetDerivatives(fmi2Component c, fmi2Real derivatives[], size_t nx) {
    return status_of(bt_get_derivatives(&component(c)->model, derivatives, nx));
}

fmi2Status fmi2GetEventIndicators(fmi2Component c, fmi2Real eventIndicators[], size_t ni) {
    (void)eventIndicators;
    return status_of(bt_check_count(&component(c)->model, "fmi2GetEventIndicators", ni, 0));
}

fmi2Status fmi2GetContinuousStates(fmi2Component c, fmi2Real x[], size_t nx) {
    return status_of(bt_get_states(&component(c)->model, x, nx));
}

fmi2Status fmi2GetNominalsOfContinuousStates(fmi2Component c, fmi2Real x_nominal[], size_t nx) {
    return status_of(bt_get_nominals(&component(c)->model, x_nominal, nx));
}

/* ---------------------------------------------------------------- co-simulation */

fmi2Status fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t nvr,
                                       const fmi2Integer order[], const fmi2Real value[]) {
    (void)vr;
    (void)nvr;
    (void)order;
    (void)value;
    return unsupported(c, "fmi2SetRealInputDerivatives (inputs are held constant over a step)");
}

fmi2Status fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[],
                                        size_t nvr, const fmi2Integer order[],
                                        fmi2Real value[]) {
    (void)vr;
    (void)nvr;
    (void)order;
    (void)value;
    return unsupported(c, "fmi2GetRealOutputDerivatives");
}

fmi2Status fmi2DoStep(fmi2Component c, fmi2Real currentCommunicationPoint,
                      fmi2Real communicationStepSize,
                      fmi2Boolean noSetFMUStatePriorToCurrentCommunicationPoint) {
    (void)noSetFMUStatePriorToCurrentCommunicationPoint;
    return status_of(
        bt_do_step(&component(c)->model, currentCommunicationPoint, communicationStepSize));
}

fmi2Status fmi2CancelStep(fmi2Component c) {
    return unsupported(c, "fmi2CancelStep (steps never run asynchronously)");
}

fmi2Status fmi2GetStatus(fmi2Component c, const fmi2StatusKind s, fmi2Status *value) {
    (void)s;
    (void)value;
    return unsupported(c, "fmi2GetStatus (steps never run asynchronously)");
}

fmi2Status fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind s, fmi2Real *value) {
    if (s == fmi2LastSuccessfulTime) {
        *value = component(c)->model.now.time_s;
        return fmi2OK;
    }
    return unsupported(c, "fmi2GetRealStatus for this status kind");
}

fmi2Status fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind s, fmi2Integer *value) {
    (void)s;
    (void)value;
    return unsupported(c, "fmi2GetIntegerStatus");
}

fmi2Status fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind s, fmi2Boolean *value) {
    (void)s;
    (void)value;
    return unsupported(c, "fmi2GetBooleanStatus");
}

fmi2Status fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind s, fmi2String *value) {
    (void)s;
    (void)value;
    return unsupported(c, "fmi2GetStringStatus");
}
