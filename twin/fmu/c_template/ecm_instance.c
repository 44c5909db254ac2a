/* Variables, modes and checks of the FMU instance, shared by the FMI 2.0 and 3.0 adapters. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "ecm_instance.h"

static const char *variable_name(unsigned int vr) {
    switch (vr) {
#define BT_NAME_CASE(ref, name) \
    case ref:                   \
        return name;
        BT_VARIABLES(BT_NAME_CASE)
#undef BT_NAME_CASE
        default:
            return "(no such variable)";
    }
}

static int is_rc_voltage(unsigned int vr, unsigned int first) {
    return vr >= first && vr < first + BT_N_RC;
}

void bt_instance_setup(bt_instance *inst, int model_exchange, bt_logger *log, void *log_owner) {
    inst->model_exchange = model_exchange;
    inst->log = log;
    inst->log_owner = log_owner;
    bt_instance_defaults(inst);
}

void bt_instance_defaults(bt_instance *inst) {
    bt_snapshot *s = &inst->now;
    s->time_s = 0.0;
    s->soc_initial = BT_DEFAULT_SOC_INITIAL;
    s->temperature_initial_c = BT_DEFAULT_TEMPERATURE_INITIAL_C;
    s->par.soh = BT_DEFAULT_SOH;
    s->par.resistance_factor = BT_DEFAULT_RESISTANCE_FACTOR;
    s->par.coulombic_efficiency = BT_DEFAULT_COULOMBIC_EFFICIENCY;
    s->in.current_a = BT_DEFAULT_CURRENT_A;
    s->in.ambient_c = BT_DEFAULT_AMBIENT_C;
    bt_model_init(&s->st, s->soc_initial, s->temperature_initial_c);
    s->voltage_valid = 0;
    inst->mode = BT_INSTANTIATED;
}

bt_status bt_fail(bt_instance *inst, const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (inst->log) inst->log(inst->log_owner, BT_ERROR, message);
    inst->mode = BT_FAILED;
    return BT_ERROR;
}

/* A NaN (or missing, which importers often send as NaN) input must not turn into a NaN
 * voltage downstream: refuse it and name the variable. */
static bt_status check_inputs(bt_instance *inst, const char *where) {
    const bt_inputs *u = &inst->now.in;
    if (!isfinite(u->current_a)) {
        return bt_fail(inst,
                       "%s: input 'current' is not a finite number (%g); set the current in A "
                       "(positive = discharge) before the call",
                       where, u->current_a);
    }
    if (!isfinite(u->ambient_c)) {
        return bt_fail(inst,
                       "%s: input 'ambient_temperature' is not a finite number (%g); set the "
                       "ambient temperature in degC before the call",
                       where, u->ambient_c);
    }
    return BT_OK;
}

/* Without the thermal model the cell sits at ambient temperature (model exchange). */
static void sync_temperature(bt_instance *inst) {
    if (inst->model_exchange && !BT_THERMAL) inst->now.st.temperature_c = inst->now.in.ambient_c;
}

static bt_status derivative(bt_instance *inst, unsigned int vr, double *value) {
    double dx[BT_N_STATES];
    if (check_inputs(inst, "GetReal") != BT_OK) return BT_ERROR;
    sync_temperature(inst);
    bt_model_derivatives(&inst->now.st, &inst->now.par, &inst->now.in, dx);
    if (vr == BT_VR_DER_SOC) {
        *value = dx[0];
    } else if (is_rc_voltage(vr, BT_VR_DER_RC_VOLTAGE0)) {
        *value = dx[1 + (vr - BT_VR_DER_RC_VOLTAGE0)];
    } else {
        *value = dx[BT_N_STATES - 1]; /* temperature */
    }
    return BT_OK;
}

static bt_status voltage(bt_instance *inst, double *value) {
    bt_snapshot *s = &inst->now;
    if (!inst->model_exchange && s->voltage_valid) {
        *value = s->st.voltage_v; /* the step's own result, bit for bit as EcmTwin */
        return BT_OK;
    }
    if (check_inputs(inst, "GetReal('voltage')") != BT_OK) return BT_ERROR;
    sync_temperature(inst);
    *value = bt_model_voltage(&s->st, &s->par, &s->in);
    return BT_OK;
}

bt_status bt_get_real(bt_instance *inst, unsigned int vr, double *value) {
    bt_snapshot *s = &inst->now;
    switch (vr) {
        case BT_VR_TIME: *value = s->time_s; return BT_OK;
        case BT_VR_CURRENT: *value = s->in.current_a; return BT_OK;
        case BT_VR_AMBIENT_TEMPERATURE: *value = s->in.ambient_c; return BT_OK;
        case BT_VR_VOLTAGE: return voltage(inst, value);
        case BT_VR_SOC: *value = s->st.soc; return BT_OK;
        case BT_VR_TEMPERATURE:
            sync_temperature(inst);
            *value = s->st.temperature_c;
            return BT_OK;
        case BT_VR_SOC_INITIAL: *value = s->soc_initial; return BT_OK;
        case BT_VR_TEMPERATURE_INITIAL: *value = s->temperature_initial_c; return BT_OK;
        case BT_VR_SOH: *value = s->par.soh; return BT_OK;
        case BT_VR_RESISTANCE_FACTOR: *value = s->par.resistance_factor; return BT_OK;
        case BT_VR_COULOMBIC_EFFICIENCY: *value = s->par.coulombic_efficiency; return BT_OK;
        case BT_VR_CAPACITY_NOMINAL: *value = BT_CAPACITY_NOMINAL_AH; return BT_OK;
#if BT_THERMAL
        case BT_VR_DER_TEMPERATURE:
#endif
        case BT_VR_DER_SOC: return derivative(inst, vr, value);
        default: break;
    }
    if (is_rc_voltage(vr, BT_VR_RC_VOLTAGE0)) {
        *value = s->st.v_rc_v[vr - BT_VR_RC_VOLTAGE0];
        return BT_OK;
    }
    if (is_rc_voltage(vr, BT_VR_DER_RC_VOLTAGE0)) return derivative(inst, vr, value);
    return bt_fail(inst, "GetReal: no variable has value reference %u", vr);
}

static int initial_values_settable(const bt_instance *inst) {
    return inst->mode == BT_INSTANTIATED || inst->mode == BT_INITIALIZATION;
}

static bt_status set_initial(bt_instance *inst, unsigned int vr, double value) {
    bt_snapshot *s = &inst->now;
    if (!initial_values_settable(inst)) {
        return bt_fail(inst,
                       "SetReal: '%s' is a start value; set it before ExitInitializationMode "
                       "(or Reset the instance)",
                       variable_name(vr));
    }
    if (!isfinite(value)) {
        return bt_fail(inst, "SetReal: '%s' must be finite, got %g", variable_name(vr), value);
    }
    if (vr == BT_VR_SOC_INITIAL) {
        if (value < 0.0 || value > 1.0) {
            return bt_fail(inst, "SetReal: 'soc_initial' must be within 0..1, got %g", value);
        }
        s->soc_initial = value;
        s->st.soc = value;
    } else if (vr == BT_VR_TEMPERATURE_INITIAL) {
        s->temperature_initial_c = value;
        s->st.temperature_c = value;
    } else {
        s->st.v_rc_v[vr - BT_VR_RC_VOLTAGE0] = value;
    }
    s->voltage_valid = 0;
    return BT_OK;
}

static bt_status set_parameter(bt_instance *inst, unsigned int vr, double value) {
    bt_params *p = &inst->now.par;
    if (!isfinite(value) || value <= 0.0) {
        return bt_fail(inst, "SetReal: '%s' must be finite and > 0, got %g", variable_name(vr),
                       value);
    }
    if (vr == BT_VR_SOH) {
        p->soh = value;
    } else if (vr == BT_VR_RESISTANCE_FACTOR) {
        if (value != p->resistance_factor) inst->now.voltage_valid = 0;
        p->resistance_factor = value;
    } else {
        if (value > 1.0) {
            return bt_fail(inst, "SetReal: 'coulombic_efficiency' must be in (0, 1], got %g",
                           value);
        }
        p->coulombic_efficiency = value;
    }
    return BT_OK;
}

bt_status bt_set_real(bt_instance *inst, unsigned int vr, double value) {
    if (inst->mode == BT_FAILED || inst->mode == BT_TERMINATED) {
        return bt_fail(inst,
                       "SetReal('%s'): the instance is %s; Reset it first", variable_name(vr),
                       inst->mode == BT_FAILED ? "in the error state (see earlier messages)"
                                               : "terminated");
    }
    switch (vr) {
        case BT_VR_CURRENT:
            /* Checked where it is used, so the message can say which call it broke. A new
             * value makes the voltage direct feedthrough again (R0 * I); re-setting the
             * step's own value keeps the step's exact result. */
            if (!(value == inst->now.in.current_a)) inst->now.voltage_valid = 0;
            inst->now.in.current_a = value;
            return BT_OK;
        case BT_VR_AMBIENT_TEMPERATURE: inst->now.in.ambient_c = value; return BT_OK;
        case BT_VR_SOC_INITIAL:
        case BT_VR_TEMPERATURE_INITIAL: return set_initial(inst, vr, value);
        case BT_VR_SOH:
        case BT_VR_RESISTANCE_FACTOR:
        case BT_VR_COULOMBIC_EFFICIENCY: return set_parameter(inst, vr, value);
        default: break;
    }
    if (is_rc_voltage(vr, BT_VR_RC_VOLTAGE0)) return set_initial(inst, vr, value);
    return bt_fail(inst, "SetReal: '%s' (value reference %u) cannot be set", variable_name(vr),
                   vr);
}

bt_status bt_enter_initialization(bt_instance *inst, double start_time_s) {
    if (inst->mode != BT_INSTANTIATED) {
        return bt_fail(inst, "EnterInitializationMode: the instance is already initialised; "
                             "Reset it first");
    }
    inst->now.time_s = start_time_s;
    inst->mode = BT_INITIALIZATION;
    return BT_OK;
}

bt_status bt_exit_initialization(bt_instance *inst) {
    if (inst->mode != BT_INITIALIZATION) {
        return bt_fail(inst, "ExitInitializationMode: call EnterInitializationMode first");
    }
    inst->mode = inst->model_exchange ? BT_EVENT : BT_STEP;
    return BT_OK;
}

bt_status bt_do_step(bt_instance *inst, double current_time_s, double step_s) {
    bt_snapshot *s = &inst->now;
    char where[64];
    if (inst->mode != BT_STEP) {
        return bt_fail(inst, "DoStep: the instance is not in step mode (%s)",
                       inst->mode == BT_FAILED ? "an earlier call failed, see the log; Reset it"
                                               : "initialise it first");
    }
    if (!isfinite(step_s) || step_s <= 0.0) {
        return bt_fail(inst, "DoStep: communicationStepSize must be finite and > 0 s, got %g",
                       step_s);
    }
    snprintf(where, sizeof where, "DoStep at t = %g s", current_time_s);
    if (check_inputs(inst, where) != BT_OK) return BT_ERROR;
    bt_model_step(&s->st, &s->par, &s->in, step_s);
    s->time_s = current_time_s + step_s;
    s->voltage_valid = 1;
    return BT_OK;
}

bt_status bt_check_count(bt_instance *inst, const char *function, size_t n, size_t expected) {
    if (n != expected) {
        return bt_fail(inst, "%s: this FMU has %u, not %u, of them", function,
                       (unsigned int)expected, (unsigned int)n);
    }
    return BT_OK;
}

bt_status bt_get_states(bt_instance *inst, double x[], size_t n) {
    if (bt_check_count(inst, "GetContinuousStates", n, BT_N_STATES) != BT_OK) return BT_ERROR;
    bt_model_get_states(&inst->now.st, x);
    return BT_OK;
}

bt_status bt_set_states(bt_instance *inst, const double x[], size_t n) {
    if (bt_check_count(inst, "SetContinuousStates", n, BT_N_STATES) != BT_OK) return BT_ERROR;
    bt_model_set_states(&inst->now.st, x);
    return BT_OK;
}

bt_status bt_get_derivatives(bt_instance *inst, double dx[], size_t n) {
    char where[64];
    if (bt_check_count(inst, "GetDerivatives", n, BT_N_STATES) != BT_OK) return BT_ERROR;
    snprintf(where, sizeof where, "GetDerivatives at t = %g s", inst->now.time_s);
    if (check_inputs(inst, where) != BT_OK) return BT_ERROR;
    sync_temperature(inst);
    bt_model_derivatives(&inst->now.st, &inst->now.par, &inst->now.in, dx);
    return BT_OK;
}

bt_status bt_get_nominals(bt_instance *inst, double nominals[], size_t n) {
    size_t i;
    if (bt_check_count(inst, "GetNominalsOfContinuousStates", n, BT_N_STATES) != BT_OK) {
        return BT_ERROR;
    }
    for (i = 0; i < n; i++) nominals[i] = 1.0;
    return BT_OK;
}

void bt_note_direction(bt_instance *inst) {
    if (isfinite(inst->now.in.current_a)) {
        bt_model_note_direction(&inst->now.st, &inst->now.par, inst->now.in.current_a);
    }
}
