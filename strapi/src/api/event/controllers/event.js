'use strict';

/**
 * event controller
 */

const { factories } = require('@strapi/strapi');

module.exports = factories.createCoreController('api::event.event');
